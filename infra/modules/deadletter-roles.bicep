// Lets each workspace's system topic write the events it could not deliver into the dead-letter container, and
// nothing else.

param stateAccountName string
param deadLetterContainerName string

@description('Principal ids of the system topics\' system-assigned identities.')
param principalIds array

var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

resource stateAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: stateAccountName
}

resource stateBlobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: stateAccount
  name: 'default'
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: stateBlobs
  name: deadLetterContainerName
}

resource writer 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for principalId in principalIds: {
    name: guid(deadLetterContainer.id, principalId, storageBlobDataContributor)
    scope: deadLetterContainer
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
      principalId: principalId
      principalType: 'ServicePrincipal'
    }
  }
]
