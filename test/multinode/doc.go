// Package multinode tests several "dpsd serve" processes sharing one
// PostgreSQL database, as a deployment behind a load balancer runs them:
// a device registered on one node is seen on every other, concurrent
// registrations of one device on two nodes agree on one record, and a node
// killed in the middle of a burst loses no device.
//
// The tests build dpsd once, start each node on a loopback address of its
// own in 127.0.0.50-59 (ports chosen by the kernel), and give every node
// the same server certificate from a CA made by the test, so one client
// configuration trusts them all. Each test gets a fresh schema in the test
// database (see store/postgres/pgtest): set DPSD_TEST_POSTGRES to the DSN
// scripts/ensure-postgres.sh prints. Without a reachable database the
// tests skip, except in CI (CI set), where they fail.
//
// With -multinode.bench, TestThroughput compares registrations per second
// of 1, 2 and 3 nodes on PostgreSQL with one node on the embedded SQLite
// store, using one load generator for all:
//
//	go test ./test/multinode -run TestThroughput -multinode.bench -v
//
// Environment:
//
//	DPSD_TEST_POSTGRES     DSN of the test database server
//	DPSD_MULTINODE_KEEP=1  keep the nodes' data directories and logs
package multinode
