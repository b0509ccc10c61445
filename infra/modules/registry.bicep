// The relay's access to the Azure ML registry that carries models from dev to staging to prod (deployed into the
// registry's resource group).

param registryName string
param principalId string

// AzureML Registry User: read and write the registry's assets (models, components, environments) and read the
// registry itself; no right to change or delete the registry. Staging and production deploy the registry's
// model ids, and promotion copies a model version into the registry.
var azureMLRegistryUser = '1823dd4f-9b8c-4ab6-ab4e-7397a3684615'

resource registry 'Microsoft.MachineLearningServices/registries@2024-10-01' existing = {
  name: registryName
}

resource registryUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, principalId, azureMLRegistryUser)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', azureMLRegistryUser)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
