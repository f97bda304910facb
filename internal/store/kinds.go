package store

// The kinds of dpsd's own endpoints and of the built-in hubs. With those of
// store.go they are every kind dpsd stores; the packages that own them
// refer to these constants, so a kind is named once.
const (
	KindLinkedHub     Kind = "linkedHub"     // linkedhub.Hub; id = hub host name
	KindCACertificate Kind = "caCertificate" // certs.Certificate; id = certificate name
	KindAllocationLog Kind = "allocationLog" // alloclog entries; id = registration id
	// KindAllocationPolicy holds allocpolicy.Policy; id = policy name.
	KindAllocationPolicy Kind = "allocationPolicy"
	// KindRefusal holds refused device requests (admin.Refusal) when the
	// store is shared by several nodes; id = tracking id, Ref =
	// registration id.
	KindRefusal Kind = "refusal"
	// KindIssuingCA holds an operator's issuing CA with its private key
	// (issuer.Registry); id = lower-cased CA name.
	KindIssuingCA Kind = "issuingCA"

	KindHub        Kind = "hub"        // built-in hub configuration; id = hub name
	KindHubDevice  Kind = "hubDevice"  // built-in hub device; id = hub/deviceId, Ref = hub name
	KindHubSession Kind = "hubSession" // built-in hub persistent MQTT session; id = hub/clientId, Ref = hub name
	KindHubCA      Kind = "hubCA"      // CA a built-in hub trusts; id = hub/SHA-256 thumbprint, Ref = hub name
	KindHubC2D     Kind = "hubC2D"     // a built-in hub device's cloud-to-device queue; id = hub/deviceId, Ref = hub name
	KindHubModule  Kind = "hubModule"  // built-in hub module identity and twin; id = hub/deviceId/moduleId, Ref = hub name
	// KindHubTelemetry is a built-in hub's telemetry, kept over a restart;
	// id = hub name, Ref = hub name.
	KindHubTelemetry Kind = "hubTelemetry"
	// KindHubFeedback holds a built-in hub's cloud-to-device feedback
	// records waiting for a service's feedback receiver; id = hub name,
	// Ref = hub name.
	KindHubFeedback Kind = "hubFeedback"
)

// Kinds lists every kind dpsd stores. A test checks it against the
// constants of this package.
var Kinds = []Kind{
	KindConfig, KindEnrollment, KindEnrollmentGroup, KindRegistration,
	KindLinkedHub, KindCACertificate, KindAllocationLog, KindAllocationPolicy, KindRefusal, KindIssuingCA,
	KindHub, KindHubDevice, KindHubSession, KindHubCA, KindHubC2D, KindHubModule, KindHubTelemetry, KindHubFeedback,
	KindHealth,
}

// Watched lists the kinds whose writes a store shared by several nodes
// announces (Store.Changes): those nodes cache and drop when any node
// changes them, and individual enrollments, which are written only by
// operators and announced so that caching them later needs no migration.
var Watched = []Kind{KindEnrollment, KindEnrollmentGroup, KindLinkedHub}
