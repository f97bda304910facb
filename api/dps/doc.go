// Package dps holds the wire types of the Azure IoT Hub Device Provisioning
// Service as the official SDKs see them: enrollments, enrollment groups,
// registration states, device registration operations, bulk operations, the
// custom allocation webhook contract and the error body.
//
// Server and clients share these types, so a field renamed here is renamed on
// both sides of the wire at once. Members that Azure returns only when set are
// pointers or omitempty so that a round trip through dpsd does not invent
// values a client never sent.
package dps
