// Package alloclog keeps the allocation audit trail: for every custom
// allocation of a device, the request dpsd sent to the webhook (without
// secrets), each attempt's answer (status, body, time taken), the waits
// between retries, and the outcome. It is what an operator reads to see why
// a device landed where it did, or why its registration failed, without a
// cloud logging service.
//
// The trail is kept per registration id, bounded to the last MaxEntries
// allocations and MaxRecordBytes, in the store under Kind. An entry is
// written when the allocation starts, again before each wait to retry (so a
// registration still retrying its webhook shows its progress) and when it
// ends: two durable writes for an allocation answered at once.
package alloclog
