// The Service Bus namespace and the relay's work queues. Local (SAS key) authentication is off: the relay sends
// and its functions receive with Entra tokens for the managed identity.

param namespaceName string
param location string
param tags object

@allowed([
  'Standard'
  'Premium'
])
param sku string

@description('Queues: name and requiresSession.')
param queues array

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: namespaceName
  location: location
  tags: tags
  sku: {
    name: sku
    tier: sku
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

resource queue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = [
  for q in queues: {
    parent: namespace
    name: q.name
    properties: {
      // Sessions (set at creation, immutable) give one consumer at a time per model, in order.
      requiresSession: q.requiresSession
      // The relay sends each action with its deterministic action id as MessageId. It records the action in its
      // ledger before sending, so a crash in between is healed when the event is redelivered and the action sent
      // again. Event Grid keeps redelivering for up to a day (eventTimeToLiveInMinutes = 1440 in
      // modules/eventgrid.bicep), so the window that must absorb that resend is a day. Set at creation, immutable.
      requiresDuplicateDetection: true
      duplicateDetectionHistoryTimeWindow: 'P1D'
      // A worker gets a minute per attempt before the lock lapses; the Functions host renews it while the
      // function runs (host.json maxAutoLockRenewalDuration).
      lockDuration: 'PT1M'
      // Ten attempts, then the message moves to <queue>/$deadletterqueue with reason MaxDeliveryCountExceeded.
      maxDeliveryCount: 10
      // An action nobody could carry out in a week is stale; it is dead-lettered rather than dropped.
      defaultMessageTimeToLive: 'P7D'
      deadLetteringOnMessageExpiration: true
      enableBatchedOperations: true
      enablePartitioning: false
      maxSizeInMegabytes: 1024
    }
  }
]

output namespaceName string = namespace.name
// serviceBusEndpoint is https://<namespace>.servicebus.windows.net:443/ (another suffix in sovereign clouds).
output fullyQualifiedNamespace string = split(replace(namespace.properties.serviceBusEndpoint, 'https://', ''), ':')[0]
