// Package alloclog keeps the allocation audit trail: for every allocation
// of a device, why it chose its hub (the policy, the candidate hubs with
// their weights and locations, the reason, what reprovisioning does), and
// for a custom allocation the request dpsd sent to the webhook or policy
// (without secrets), each attempt's answer (status, an accepted body, or
// the start of any other answer marked as the webhook's text, time
// taken), the waits between retries, and the outcome. It is what an
// operator reads to see why a device landed where it did, or why its
// registration failed, without a cloud logging service.
//
// The trail is kept per registration id, bounded to the last MaxEntries
// allocations and MaxRecordBytes, in the store under Kind. A webhook
// allocation's entry is written when it starts, again before each wait to
// retry (so a registration still retrying its webhook shows its progress)
// and when it ends; an allocation that calls nothing (hashed, static,
// geoLatency, an in-process policy) is written once, complete (Record).
package alloclog
