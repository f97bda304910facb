// Package testenv is the one harness of the tests that run dpsd as a
// process (test/e2e, test/multinode): it builds binaries once per test
// process, starts "dpsd serve" nodes and waits until they serve, stops them
// by their process id only, tails their logs, and makes the test PKI a
// cluster of nodes shares.
//
// A suite calls Main from its TestMain, so every file the harness writes
// (binaries, data directories, logs) lives under one temporary directory
// that is removed afterwards, or kept when DPSD_<SUITE>_KEEP is set.
package testenv
