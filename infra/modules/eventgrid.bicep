// The Event Grid subscriptions that deliver one workspace's Azure ML events to the relay's AmlEvents function
// (an eventGridTrigger, function-defs/AmlEvents/function.json). Deployed into the workspace's resource group,
// on its system topic (modules/workspace.bicep).
//
// Endpoint type AzureFunction: Event Grid calls the function through the platform, with no webhook URL, no
// function key and no validation handshake. Event Grid checks that the function exists when the subscription
// is created, which is why main.bicep creates these only once the package is published (subscribeToEvents).

param systemTopicName string

@description('Prefix of the subscription names, unique per relay stamp, so stamps can share a workspace\'s topic.')
param subscriptionPrefix string

param functionAppId string
param deadLetterAccountId string
param deadLetterContainerName string

// Key of the tag Azure ML model monitoring (v2) sets on a monitor run that breached its thresholds, and the text
// the tag then contains (reference §3.4; Microsoft's model-monitoring how-to gives this exact filter).
var breachTagKey = 'data.RunTags.azureml_modelmonitor_threshold_breached'
var breachText = 'has failed due to one or more features violating metric thresholds'

var destination = {
  endpointType: 'AzureFunction'
  properties: {
    resourceId: '${functionAppId}/functions/AmlEvents'
    // One event per invocation: the Functions Event Grid extension answers 500 for the whole batch when any
    // event in it fails, so a batch would be redelivered whole.
    maxEventsPerBatch: 1
    preferredBatchSizeInKilobytes: 64
  }
}

// Event Grid retries for a day (its maximum), then dead-letters into the state account as the topic itself. The
// Service Bus duplicate-detection window (modules/servicebus.bicep) is sized to this day.
var retryPolicy = {
  maxDeliveryAttempts: 30
  eventTimeToLiveInMinutes: 1440
}

var deadLetter = {
  identity: {
    type: 'SystemAssigned'
  }
  deadLetterDestination: {
    endpointType: 'StorageBlob'
    properties: {
      resourceId: deadLetterAccountId
      blobContainerName: deadLetterContainerName
    }
  }
}

resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: systemTopicName
}

// The five Azure ML event types the relay understands (handlers/events/aml.rs). Monitor-breach runs are left to
// the subscription below, so each event arrives once: their RunStatusChanged carries the breach tag, every other
// event lacks it. Should the filter ever let a breach through here as well, the relay's ledger absorbs the
// duplicate (same event id).
resource amlEvents 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: topic
  name: '${subscriptionPrefix}-aml'
  properties: {
    destination: destination
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.MachineLearningServices.ModelRegistered'
        'Microsoft.MachineLearningServices.ModelDeployed'
        'Microsoft.MachineLearningServices.RunCompleted'
        'Microsoft.MachineLearningServices.RunStatusChanged'
        'Microsoft.MachineLearningServices.DatasetDriftDetected'
      ]
      advancedFilters: [
        {
          operatorType: 'IsNullOrUndefined'
          key: breachTagKey
        }
      ]
    }
    retryPolicy: retryPolicy
    deadLetterWithResourceIdentity: deadLetter
  }
}

// Model monitoring (v2): a monitor run fails when a signal breaches its threshold and says so in a run tag.
resource monitorBreaches 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: topic
  name: '${subscriptionPrefix}-monitor-breach'
  properties: {
    destination: destination
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.MachineLearningServices.RunStatusChanged'
      ]
      advancedFilters: [
        {
          operatorType: 'StringContains'
          key: breachTagKey
          values: [
            breachText
          ]
        }
      ]
    }
    retryPolicy: retryPolicy
    deadLetterWithResourceIdentity: deadLetter
  }
}
