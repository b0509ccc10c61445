// Log Analytics and workspace-based Application Insights. Local (instrumentation-key) authentication is off:
// telemetry is accepted only with an Entra token, which the app gets as its managed identity
// (APPLICATIONINSIGHTS_AUTHENTICATION_STRING), so the connection string carries no usable credential.

param baseName string
param location string
param tags object
param retentionInDays int

resource logs 'Microsoft.OperationalInsights/workspaces@2022-10-01' = {
  name: 'log-${baseName}'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${baseName}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
    DisableLocalAuth: true
    IngestionMode: 'LogAnalytics'
  }
}

output appInsightsName string = appInsights.name
output connectionString string = appInsights.properties.ConnectionString
