// Package eventhub serves the Event Hubs-compatible endpoint of a built-in
// IoT hub over AMQP 1.0: what the @azure/event-hubs consumer (and the other
// Event Hubs SDKs) need to read the hub's device-to-cloud telemetry.
//
// It is a layer on a connection of the hub's AMQP endpoint (Wrap): $cbs
// put-tokens whose audience is an sb:// address, the $management node's
// READ operations (com.microsoft:eventhub, com.microsoft:partition) and
// receiver links on {hub}/ConsumerGroups/{group}/Partitions/{n} with the
// apache.org:selector-filter:string start position are served here; every
// other link and token goes to the hub's own handler. The events carry the
// message annotations and properties IoT Hub gives them
// (x-opt-sequence-number, x-opt-offset, x-opt-enqueued-time,
// iothub-connection-device-id, iothub-enqueuedtime, …) and go out only as
// the receiver grants credit.
package eventhub
