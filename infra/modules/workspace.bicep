// One watched Azure ML workspace (deployed into the workspace's resource group): the relay's right to submit
// jobs and manage online deployments there, and the workspace's Event Grid system topic.

param workspaceName string

@description('The workspace\'s region: a system topic lives in the region of its source.')
param location string

@description('Azure allows one system topic per source. If the workspace already has one, pass its name: re-deploying it with the same source is an update, not a second topic.')
param systemTopicName string

param principalId string
param tags object

// AzureML Data Scientist: every action inside a workspace except creating or deleting compute and changing the
// workspace itself. That covers submitting pipeline jobs and creating online endpoints and deployments.
var azureMLDataScientist = 'f6c7c914-8db3-469d-8ca1-694a8f32e121'

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-10-01' existing = {
  name: workspaceName
}

resource dataScientist 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, principalId, azureMLDataScientist)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', azureMLDataScientist)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// The system-assigned identity is what the topic dead-letters undeliverable events with (modules/eventgrid.bicep).
// It is stable across re-deployments, so several relay stamps watching the same workspace can share the topic.
resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: systemTopicName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: workspace.id
    topicType: 'Microsoft.MachineLearningServices.Workspaces'
  }
}

output systemTopicName string = topic.name
output topicPrincipalId string = topic.identity.principalId
