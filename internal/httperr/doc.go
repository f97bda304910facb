// Package httperr writes dpsd's HTTP answers in Azure's shape: every error of
// every HTTP endpoint (device API, service API, dpsd's own endpoints) goes
// through Write, and every JSON body through WriteJSON.
//
// Write answers a *dps.Error as it is; the store being unavailable as 503000
// with UnavailableRetryAfter, so clients retry rather than give up; anything
// else as 500000 without its details, logged with the tracking id the client
// sees so the two can be matched. The codes and their default messages are
// the catalogue of package dps (dps.Codes).
package httperr
