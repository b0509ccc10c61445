// mlops-relay on Azure: one relay "stamp" per environment (dev, staging, prod), deployed into its own resource
// group. Parameter files: infra/params/<environment>.bicepparam. The deployment guide is infra/README.md.
//
// Everything authenticates with one user-assigned managed identity; no key, password or connection string is
// stored anywhere. Role assignments are the least the relay needs: send and receive on its Service Bus
// namespace, read and write its state container, run jobs and deployments in the watched Azure ML workspaces,
// use the Azure ML registry that carries models between them, and publish its telemetry.

targetScope = 'resourceGroup'

@description('Short name shared by every resource of this relay. Lower-case letters and digits only, 3-10 characters: it is part of the storage account names.')
@minLength(3)
@maxLength(10)
param namePrefix string = 'mlrelay'

@description('The environment this stamp is: it names resources and tags them.')
@allowed([
  'dev'
  'staging'
  'prod'
])
param environmentName string

@description('Region of the relay\'s own resources. It must offer Flex Consumption: az functionapp list-flexconsumption-locations.')
param location string = resourceGroup().location

@description('Azure ML workspaces this relay watches and acts in. Each entry: name, resourceGroup, location (the workspace\'s region; its Event Grid system topic must be there), optional subscriptionId (default: this deployment\'s subscription) and optional systemTopicName (set it when the workspace already has an Event Grid system topic: a resource can have only one).')
param workspaces array

@description('The Azure ML registry that carries models between workspaces: name, resourceGroup, optional subscriptionId. Leave name empty to grant no registry access.')
param registry object = {
  name: ''
  resourceGroup: ''
}

@description('Service Bus tier. Standard has sessions, duplicate detection and dead-lettering, which is all the relay needs.')
@allowed([
  'Standard'
  'Premium'
])
param serviceBusSku string = 'Standard'

@description('Most instances Flex Consumption may scale the app out to.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Memory of each instance, in MB.')
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Spread the Function App over availability zones (the region must have them). Flex Consumption then keeps at least two always-ready instances per function group, billed as such.')
param zoneRedundant bool = false

@description('Decide and record, but make every notification, retrain and deployment a dry run (RELAY_DRY_RUN): for a stamp that rehearses another on the same workspaces, so that one registration does not ask for approval, or deploy, once per stamp.')
param dryRun bool = false

@description('functionAppConfig.runtime.version for the custom handler runtime. Check it against the regional catalogue first: az functionapp list-flexconsumption-runtimes --location <region> --runtime custom. An uncatalogued value deploys but the host never starts.')
param customRuntimeVersion string = '1.0'

@description('RELAY_POLICY: the policy file the app reads, relative to the app root (the package puts policy.toml there).')
param policyPath string = 'policy.toml'

@description('Days Log Analytics keeps the relay\'s logs.')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 30

@description('Create the Event Grid subscriptions that deliver Azure ML events to the AmlEvents function. Event Grid checks that the function exists, so the first deployment runs with false, the package is published, then this runs again with true.')
param subscribeToEvents bool = true

@description('More app settings (name to value), for example Key Vault references for notification webhooks: @Microsoft.KeyVault(SecretUri=...). Never put a secret here in clear.')
param extraAppSettings object = {}

var token = take(uniqueString(resourceGroup().id, namePrefix, environmentName), 8)
var baseName = '${namePrefix}-${environmentName}'
var tags = {
  app: 'mlops-relay'
  environment: environmentName
}

// The queues the relay's functions use (handlers/functions/mod.rs, function-defs/*Worker/function.json). Sessions
// keep one model's retrains and deployments in order; notifications have no order to keep.
var queues = [
  {
    name: 'retrain-requests'
    requiresSession: true
  }
  {
    name: 'deploy-requests'
    requiresSession: true
  }
  {
    name: 'notifications'
    requiresSession: false
  }
]

var registrySubscription = contains(registry, 'subscriptionId') ? registry.subscriptionId : subscription().subscriptionId

var stateContainerName = 'relay-state'
var deadLetterContainerName = 'eventgrid-deadletter'
var deploymentContainerName = 'app-package'

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${baseName}'
  location: location
  tags: tags
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    baseName: baseName
    location: location
    tags: tags
    retentionInDays: logRetentionDays
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    hostAccountName: 'st${namePrefix}host${take(token, 6)}'
    stateAccountName: 'st${namePrefix}state${take(token, 6)}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    stateContainerName: stateContainerName
    deadLetterContainerName: deadLetterContainerName
    zoneRedundant: zoneRedundant
  }
}

module serviceBus 'modules/servicebus.bicep' = {
  name: 'servicebus'
  params: {
    namespaceName: 'sb-${baseName}-${token}'
    location: location
    tags: tags
    sku: serviceBusSku
    queues: queues
  }
}

module roles 'modules/roles.bicep' = {
  name: 'roles'
  params: {
    principalId: identity.properties.principalId
    hostAccountName: storage.outputs.hostAccountName
    stateAccountName: storage.outputs.stateAccountName
    stateContainerName: stateContainerName
    serviceBusNamespaceName: serviceBus.outputs.namespaceName
    appInsightsName: monitoring.outputs.appInsightsName
  }
}

// The watched workspaces' resource ids: the relay places a workspace the policy names by them.
var workspaceIds = [
  for ws in workspaces: '/subscriptions/${contains(ws, 'subscriptionId') ? ws.subscriptionId : subscription().subscriptionId}/resourceGroups/${ws.resourceGroup}/providers/Microsoft.MachineLearningServices/workspaces/${ws.name}'
]

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  dependsOn: [
    roles
  ]
  params: {
    appName: 'func-${baseName}-${token}'
    planName: 'asp-${baseName}'
    location: location
    tags: tags
    identityId: identity.id
    identityClientId: identity.properties.clientId
    hostAccountName: storage.outputs.hostAccountName
    deploymentContainerUrl: '${storage.outputs.hostBlobEndpoint}${deploymentContainerName}'
    stateUrl: '${storage.outputs.stateBlobEndpoint}${stateContainerName}'
    serviceBusFqdn: serviceBus.outputs.fullyQualifiedNamespace
    appInsightsConnectionString: monitoring.outputs.connectionString
    policyPath: policyPath
    workspaceIds: join(workspaceIds, ',')
    customRuntimeVersion: customRuntimeVersion
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    extraAppSettings: extraAppSettings
    zoneRedundant: zoneRedundant
    dryRun: dryRun
  }
}

// One system topic per workspace (Azure allows only one per source), plus the relay's right to act there.
module workspaceAccess 'modules/workspace.bicep' = [
  for ws in workspaces: {
    name: 'ws-${ws.name}'
    scope: resourceGroup(contains(ws, 'subscriptionId') ? ws.subscriptionId : subscription().subscriptionId, ws.resourceGroup)
    params: {
      workspaceName: ws.name
      location: ws.location
      systemTopicName: contains(ws, 'systemTopicName') ? ws.systemTopicName : 'evgt-${ws.name}'
      principalId: identity.properties.principalId
      tags: tags
    }
  }
]

// Each system topic writes events it could not deliver into the dead-letter container, as itself.
module deadLetterRoles 'modules/deadletter-roles.bicep' = {
  name: 'deadletter-roles'
  params: {
    stateAccountName: storage.outputs.stateAccountName
    deadLetterContainerName: deadLetterContainerName
    principalIds: [for (ws, i) in workspaces: workspaceAccess[i].outputs.topicPrincipalId]
  }
}

module eventSubscriptions 'modules/eventgrid.bicep' = [
  for (ws, i) in workspaces: if (subscribeToEvents) {
    name: 'evgs-${ws.name}'
    scope: resourceGroup(contains(ws, 'subscriptionId') ? ws.subscriptionId : subscription().subscriptionId, ws.resourceGroup)
    dependsOn: [
      deadLetterRoles
    ]
    params: {
      systemTopicName: workspaceAccess[i].outputs.systemTopicName
      subscriptionPrefix: 'relay-${environmentName}'
      functionAppId: functionApp.outputs.id
      deadLetterAccountId: storage.outputs.stateAccountId
      deadLetterContainerName: deadLetterContainerName
    }
  }
]

module registryAccess 'modules/registry.bicep' = if (!empty(registry.name)) {
  name: 'registry-access'
  // (An empty resourceGroup only occurs with an empty name, when this module is not deployed at all.)
  scope: resourceGroup(registrySubscription, empty(registry.resourceGroup) ? resourceGroup().name : registry.resourceGroup)
  params: {
    registryName: registry.name
    principalId: identity.properties.principalId
  }
}

@description('The Function App to publish the package to.')
output functionAppName string = functionApp.outputs.name

@description('RELAY_STATE_URL as the app reads it.')
output stateUrl string = '${storage.outputs.stateBlobEndpoint}${stateContainerName}'

@description('ServiceBusConnection__fullyQualifiedNamespace as the app reads it.')
output serviceBusNamespace string = serviceBus.outputs.fullyQualifiedNamespace

@description('AZURE_CLIENT_ID: the client id of the identity the app runs as.')
output identityClientId string = identity.properties.clientId

@description('The identity\'s principal (object) id, for granting it access to anything else.')
output identityPrincipalId string = identity.properties.principalId
