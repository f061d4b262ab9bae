// Command probe prints, one line per backend, whether the test databases of
// internal/testdb are usable here:
//
//	sqlite: ok
//	postgres: ok (127.0.0.1:5432)
//	mysql: SKIPPED: <reason>
//
// It exits 1 when a backend listed in TABLEMQ_TEST_REQUIRE is unusable. It starts no
// container.
package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/tablemq/tablemq/internal/testdb"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	code := 0
	for _, b := range []string{testdb.BackendSQLite, testdb.BackendPostgres, testdb.BackendMySQL} {
		where, err := testdb.Probe(ctx, b)
		switch {
		case err != nil:
			fmt.Printf("%s: SKIPPED: %s\n", b, strings.Join(strings.Fields(err.Error()), " "))
			if testdb.Required(b) {
				code = 1
			}
		case where == "":
			fmt.Printf("%s: ok\n", b)
		default:
			fmt.Printf("%s: ok (%s)\n", b, where)
		}
	}
	os.Exit(code)
}
