package migrations

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSplitStatements(t *testing.T) {
	t.Parallel()
	got := splitStatements("-- head; comment\nALTER TABLE t ADD COLUMN c INTEGER NOT NULL DEFAULT 0;\n\n" +
		"CREATE TABLE IF NOT EXISTS x (\n    a INTEGER -- note\n);  \r\nINSERT INTO x SELECT 1\nWHERE 1 = 1;\n-- tail\n")
	require.Equal(t, []string{
		"ALTER TABLE t ADD COLUMN c INTEGER NOT NULL DEFAULT 0",
		"CREATE TABLE IF NOT EXISTS x (\n    a INTEGER -- note\n)",
		"INSERT INTO x SELECT 1\nWHERE 1 = 1",
	}, got)
	m := addColumnRE.FindStringSubmatch(got[0])
	require.Equal(t, []string{"t", "c"}, m[1:])
	require.Nil(t, addColumnRE.FindStringSubmatch(got[1]))
}

func TestSQLiteFilesSplit(t *testing.T) {
	t.Parallel()
	files, err := Render(DialectSQLite, Tables{})
	require.NoError(t, err)
	stmts := splitStatements(files["0002_paging_large.up.sql"])
	adds := 0
	for _, s := range stmts {
		require.NotContains(t, s, ";", "one statement per piece: %q", s)
		if addColumnRE.MatchString(s) {
			adds++
		}
	}
	require.Equal(t, 6, adds, "every ADD COLUMN is recognised by the guard")
}
