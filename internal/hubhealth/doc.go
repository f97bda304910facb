// Package hubhealth checks the linked IoT hubs in the background, so that
// allocation can skip hubs that do not answer (Azure assigns devices to a
// linked hub that is down; dpsd does not have to).
//
// Each node checks for itself and keeps what it finds in memory: whether a
// hub is reachable is a property of the path from the node that would
// register the device to the hub, and a node cut off from a hub should stop
// assigning devices to it even while its peers still reach it. Nothing is
// stored, so a restarted node starts with every hub "unknown" (treated as
// healthy) until its first round of checks, which runs at start.
//
// A check is one cheap authenticated call (see hub.Registrar.Probe): the
// registry statistics of a remote hub, a registry read of a built-in hub
// running in the node. It is bounded by a timeout and never retried within
// a round. A hub becomes unhealthy after Options.Failures failed checks in
// a row and healthy again after one success.
package hubhealth
