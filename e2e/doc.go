// Package e2e holds black-box tests of the tablemq binary: they build it once, start
// real `tablemq serve` processes against real databases (SQLite, PostgreSQL and MySQL
// through internal/testdb), talk to them over HTTP as a client would, and break them
// (SIGKILL, SIGTERM under load, restarts, a second instance on the same store, start-up
// errors).
//
// Every test is named TestE2E... and runs once per backend; a backend that is not
// reachable is skipped unless TABLEMQ_TEST_REQUIRE lists it. When the tests run with
// -race, the binary is built with -race too.
package e2e
