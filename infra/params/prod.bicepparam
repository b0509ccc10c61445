// The production relay: watches every workspace the policy promotes through (examples/policy.toml:
// mlw-dev → mlw-staging → mlw-prod, models carried by the mlr-shared registry). Deploy: see infra/README.md.
using '../main.bicep'

param namePrefix = 'mlrelay'
param environmentName = 'prod'
param location = 'swedencentral'

param workspaces = [
  {
    name: 'mlw-dev'
    resourceGroup: 'rg-ml-dev'
    location: 'swedencentral'
  }
  {
    name: 'mlw-staging'
    resourceGroup: 'rg-ml-staging'
    location: 'swedencentral'
  }
  {
    name: 'mlw-prod'
    resourceGroup: 'rg-ml-prod'
    location: 'swedencentral'
  }
]

param registry = {
  name: 'mlr-shared'
  resourceGroup: 'rg-ml-shared'
}

param serviceBusSku = 'Standard'
param maximumInstanceCount = 100
param instanceMemoryMB = 2048
param zoneRedundant = true
param dryRun = false
param customRuntimeVersion = '1.0'
param policyPath = 'policy.toml'
param logRetentionDays = 90

// false for the first deployment (before the package is published), true after: infra/README.md, step 4.
param subscribeToEvents = bool(readEnvironmentVariable('RELAY_SUBSCRIBE_EVENTS', 'true'))
