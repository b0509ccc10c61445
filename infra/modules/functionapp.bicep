// The Function App on Flex Consumption (Linux only), running the mlops-relay binary as a custom handler.
//
// Flex Consumption takes its language from functionAppConfig.runtime, not from a FUNCTIONS_WORKER_RUNTIME app
// setting (which it rejects), and runs the zip package from a blob container it reads as the app's identity.

param appName string
param planName string
param location string
param tags object
param identityId string
param identityClientId string
param hostAccountName string
param deploymentContainerUrl string
param stateUrl string
param serviceBusFqdn string
param appInsightsConnectionString string
param policyPath string
@description('The watched Azure ML workspaces\' resource ids, comma-separated: where the relay finds a workspace the policy names without a resource group.')
param workspaceIds string
param customRuntimeVersion string
param maximumInstanceCount int
param instanceMemoryMB int
param extraAppSettings object

@description('RELAY_DRY_RUN: decide and record, call nothing outside.')
param dryRun bool

@description('Spread instances over availability zones. Flex Consumption then keeps at least two always-ready instances per function group, billed as such.')
param zoneRedundant bool

// Every setting the host and the relay read. Identity-based connections name the managed identity explicitly
// (credential + clientId): the app has only a user-assigned identity.
var settings = union(extraAppSettings, {
  // The Functions host's own storage.
  AzureWebJobsStorage__accountName: hostAccountName
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  // The Service Bus triggers' connection ("connection": "ServiceBusConnection" in function-defs/*Worker).
  ServiceBusConnection__fullyQualifiedNamespace: serviceBusFqdn
  ServiceBusConnection__credential: 'managedidentity'
  ServiceBusConnection__clientId: identityClientId
  // Telemetry, accepted only with an Entra token for this identity.
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // The relay: which identity to get tokens for (Blob, Service Bus, Azure ML), where state lives, the policy.
  AZURE_CLIENT_ID: identityClientId
  RELAY_STATE_URL: stateUrl
  RELAY_POLICY: policyPath
  // Azure ML calls: the workspaces' subscription; their resource groups come from the policy's environments.
  RELAY_AZUREML_SUBSCRIPTION_ID: subscription().subscriptionId
  // ...and where each watched workspace lives, for a policy whose environments name only the workspace.
  RELAY_AZUREML_WORKSPACE_IDS: workspaceIds
  // A rehearsal stamp (dev, staging) watches workspaces production acts in: it must not act there too.
  RELAY_DRY_RUN: dryRun ? 'true' : 'false'
})

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  // checkov:skip=CKV_AZURE_225: zone redundancy is per environment (zoneRedundant: true in prod.bicepparam, false in dev and staging, where two always-ready instances would cost more than the stamp); checkov cannot evaluate the parameter.
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
    zoneRedundant: zoneRedundant
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  tags: tags
  kind: 'functionapp,linux'
  // checkov:skip=CKV_AZURE_222: the app must be reachable from outside: Event Grid delivers to AmlEvents, Azure Monitor alerts and drift monitors post to Alerts and Drift, approvers open Approvals in a browser. Function keys guard the webhooks; approvals carry signed single-use tokens.
  // checkov:skip=CKV_AZURE_17: the callers above (Azure Monitor, monitoring webhooks, approvers' browsers) cannot present client certificates.
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales instances itself and has no numberOfWorkers; availability across zones comes from zoneRedundant (see the plan).
  // checkov:skip=CKV_AZURE_213: Flex Consumption does not support the platform health check (healthCheckPath); GET /api/health (the Health function) is there for external probes.
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [
        for setting in items(settings): {
          name: setting.key
          value: setting.value
        }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'custom'
        version: customRuntimeVersion
      }
    }
  }
}

// No publishing passwords: deployments authenticate with Entra ID (az functionapp deployment ... uses the
// caller's token).
resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

output id string = site.id
output name string = site.name
