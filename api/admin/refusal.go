package admin

import "time"

// Refusals is the body of GET /dpsd/refusals: the device requests this node
// refused lately, newest first, filtered by registration id and/or
// tracking id.
type Refusals struct {
	Refusals []Refusal `json:"refusals"`
}

// Refusal is one refused device request: what the device was told (its
// tracking id, error code and message) and why, which the device is not
// told (a wrong key and an unknown registration id look alike to it).
type Refusal struct {
	TrackingID     string    `json:"trackingId"`
	Time           time.Time `json:"timeUtc"`
	RegistrationID string    `json:"registrationId,omitempty"`
	IDScope        string    `json:"idScope,omitempty"`
	// Transport is https, mqtt or amqp (WebSocket variants included).
	Transport string `json:"transport"`
	// Operation is register, operationStatus or status.
	Operation    string `json:"operation,omitempty"`
	ErrorCode    int    `json:"errorCode"`
	ErrorMessage string `json:"errorMessage"`
	// Reason is why the request was refused, in the operator's terms.
	Reason     string `json:"reason"`
	RemoteAddr string `json:"remoteAddr,omitempty"`
	// Node is the dpsd node that refused the request, when several share
	// a store.
	Node string `json:"node,omitempty"`
}
