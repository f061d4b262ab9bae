// Package e2e holds black-box tests of the tablemq binary: they build it once, start
// real `tablemq serve` processes against real databases (SQLite, PostgreSQL and MySQL
// through internal/testdb), talk to them over HTTP as a client would, and break them
// (SIGKILL, SIGTERM under load, restarts, a second instance on the same store, start-up
// errors).
//
// The HA tests run live-backup groups (several processes on one store; on SQLite, on
// one file) with fast lock settings (renew 200ms, expiration 1s): kill -9 of the live
// under publish and consume load, SIGSTOP of the live past its lock expiration (the
// fencing is checked in the message table itself), the live's database connections cut
// by an in-process TCP proxy, graceful handover, pause, failback, and twenty kills of
// the live among three backups with a watcher on /v1/cluster of every instance. The
// heaviest of them take a slot of a small semaphore so that they do not starve each
// other's lease renewals on a small machine.
//
// Every test is named TestE2E... and runs once per backend; a backend that is not
// reachable is skipped unless TABLEMQ_TEST_REQUIRE lists it. When the tests run with
// -race, the binary is built with -race too.
package e2e
