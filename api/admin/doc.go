// Package admin holds the wire types of dpsd's own endpoints, which it
// serves under /dpsd/ beside the Azure-compatible service API: linked hubs,
// built-in hubs, CA certificates, the allocation log, and the node facts a
// running dpsd leaves in info.json. The server, the command line and the
// tests share them, so a member renamed here is renamed on both sides.
//
// Like package dps, it imports nothing of dpsd.
package admin
