// The staging relay: a full rehearsal of production, watching the same three workspaces (dev → staging →
// prod through the shared registry) with its own queues, state and subscriptions. Deploy: see infra/README.md.
using '../main.bicep'

param namePrefix = 'mlrelay'
param environmentName = 'staging'
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
]

param registry = {
  name: 'mlr-shared'
  resourceGroup: 'rg-ml-shared'
}

param serviceBusSku = 'Standard'
param maximumInstanceCount = 40
param instanceMemoryMB = 2048
param zoneRedundant = false
// Watches workspaces the prod stamp acts in: decide and record here, act only there.
param dryRun = true
param customRuntimeVersion = '1.0'
param policyPath = 'policy.toml'
param logRetentionDays = 30

// false for the first deployment (before the package is published), true after: infra/README.md, step 4.
param subscribeToEvents = bool(readEnvironmentVariable('RELAY_SUBSCRIBE_EVENTS', 'true'))
