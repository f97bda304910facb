// Package serviceapi serves the Azure DPS service (management) API:
// individual enrollments, enrollment groups and device registration states,
// with the URL shapes, SAS authentication, etags, paging headers and error
// bodies that the official Azure service SDKs and the Azure CLI expect.
//
// The handler is thin: every rule about enrollments lives in package enroll,
// so the provisioning engine and this API see one stored representation.
package serviceapi
