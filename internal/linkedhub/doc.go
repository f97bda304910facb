// Package linkedhub keeps the IoT hubs linked to a dpsd instance: the hubs
// that allocation may assign devices to, with the connection strings dpsd
// uses to create device identities in them.
//
// A linked hub is added by its hub connection string
// ("HostName=...;SharedAccessKeyName=...;SharedAccessKey=..."); its name is
// the connection string's host name, as in Azure. Hubs carry an allocation
// weight (1–1000, default 1), an "apply allocation policy" flag (default
// true) and an optional location. Connection strings are stored in full,
// because the hub registrar needs the key, but every view meant for people or
// API clients shows the key as "****".
package linkedhub
