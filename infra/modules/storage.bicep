// Two storage accounts, both with shared-key access off (Entra ID only) and no anonymous blob access:
//
// * the host account: AzureWebJobsStorage (the Functions host's leases, timers, keys) and the deployment
//   container Flex Consumption runs the package from;
// * the state account: the relay's ledger, state and decision log (RELAY_STATE_URL) and the container Event Grid
//   dead-letters undeliverable Azure ML events into.
//
// Keeping them apart lets the relay's identity own the host account, as the Functions host needs, while it
// gets no more than Storage Blob Data Contributor on the one state container.

param hostAccountName string
param stateAccountName string
param location string
param tags object
param deploymentContainerName string
param stateContainerName string
param deadLetterContainerName string

@description('The Function App spreads over availability zones: its host account (leases, timers, the package it runs from) is then zone-redundant too, or a zone outage stops the zone-redundant app.')
param zoneRedundant bool

resource hostAccount 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: hostAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  // checkov:skip=CKV_AZURE_35: a Flex Consumption app without VNet integration reaches storage over the public endpoint, which a deny-by-default firewall blocks; access is Entra ID only (shared keys off) and role-scoped. With VNet integration and private endpoints, set defaultAction Deny.
  // checkov:skip=CKV_AZURE_59: public network access stays on for the same reason as CKV_AZURE_35; anonymous blob access and shared-key access are both off.
  // checkov:skip=CKV_AZURE_43: the name is computed from namePrefix (3-10 lower-case letters and digits) and a 6-character hash, so it always follows the storage naming rules; checkov cannot evaluate the parameter.
  // checkov:skip=CKV_AZURE_206: nothing here needs geo-replication: the package is re-published from the build and the host recreates its leases and keys; the relay's own data is in the geo-zone-redundant state account.
  sku: {
    name: zoneRedundant ? 'Standard_ZRS' : 'Standard_LRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource hostBlobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: hostAccount
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: hostBlobs
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource stateAccount 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: stateAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  // checkov:skip=CKV_AZURE_35: a Flex Consumption app without VNet integration reaches storage over the public endpoint, which a deny-by-default firewall blocks; access is Entra ID only (shared keys off) and role-scoped. With VNet integration and private endpoints, set defaultAction Deny.
  // checkov:skip=CKV_AZURE_59: public network access stays on for the same reason as CKV_AZURE_35; anonymous blob access and shared-key access are both off.
  // checkov:skip=CKV_AZURE_43: the name is computed from namePrefix (3-10 lower-case letters and digits) and a 6-character hash, so it always follows the storage naming rules; checkov cannot evaluate the parameter.
  sku: {
    name: 'Standard_GZRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource stateBlobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: stateAccount
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 30
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 30
    }
  }
}

resource stateContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: stateBlobs
  name: stateContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: stateBlobs
  name: deadLetterContainerName
  properties: {
    publicAccess: 'None'
  }
}

output hostAccountName string = hostAccount.name
output hostBlobEndpoint string = hostAccount.properties.primaryEndpoints.blob
output stateAccountName string = stateAccount.name
output stateAccountId string = stateAccount.id
output stateBlobEndpoint string = stateAccount.properties.primaryEndpoints.blob
