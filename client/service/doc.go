// Package service is a Go client for the service API of dpsd and of Azure IoT
// Hub Device Provisioning Service: individual enrollments, enrollment groups
// and device registration states.
//
// A Client is built from a service connection string
// ("HostName=...;SharedAccessKeyName=...;SharedAccessKey=...") and signs every
// request with a fresh shared access signature. As a dpsd extension the host
// name may carry a port ("127.0.0.1:8443"); the token's sr is then the host
// name without the port, which is what dpsd checks.
//
// Errors answered by the service are returned as *dps.Error wrapped with the
// operation, so callers can test the Azure error code with errors.As.
package service
