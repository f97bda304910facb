// Package refusal ties what a refused device is told to why it was
// refused. A device with a wrong key learns only "Unauthorized" and a
// tracking id; Because attaches the operator's reason to that answer, and
// Log writes one info line per refused request (tracking id, registration
// id, transport, reason) and keeps the latest ones so that
// "dpsd registration show" can find them by registration or tracking id.
package refusal
