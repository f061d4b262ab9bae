package migrations_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/migrations"
)

func TestLatest(t *testing.T) {
	t.Parallel()
	require.GreaterOrEqual(t, migrations.Latest(), uint(1))
	for _, d := range []string{migrations.DialectPostgres, migrations.DialectMySQL, migrations.DialectSQLite} {
		vs, err := migrations.Versions(d)
		require.NoError(t, err)
		require.Equal(t, migrations.Latest(), vs[len(vs)-1], d)
	}
}

func TestRender(t *testing.T) {
	t.Parallel()
	for _, d := range []string{migrations.DialectPostgres, migrations.DialectMySQL, migrations.DialectSQLite} {
		files, err := migrations.Render(d, migrations.WithPrefix("g2_"))
		require.NoError(t, err)
		require.Contains(t, files, "0001_init.up.sql")
		require.Contains(t, files, "0001_init.down.sql")
		up := files["0001_init.up.sql"]
		require.NotContains(t, up, "{{")
		for _, name := range []string{"g2_tmq_bindings", "g2_tmq_messages", "g2_tmq_large_messages", "g2_tmq_pages", "g2_tmq_node_manager", "g2_tmq_duplicate_ids"} {
			require.Contains(t, up, "EXISTS "+name, "%s: %s", d, name)
		}
		require.Contains(t, files, "0002_paging_large.up.sql")
		require.Contains(t, files, "0002_paging_large.down.sql")
		up2 := files["0002_paging_large.up.sql"]
		require.NotContains(t, up2, "{{")
		require.Contains(t, up2, "EXISTS g2_tmq_counters", d)
		for _, name := range []string{"g2_tmq_messages_lane_idx", "g2_tmq_large_messages_unref_idx", "g2_tmq_pages"} {
			require.Contains(t, up2, name, "%s: %s", d, name)
		}
		def, err := migrations.Render(d, migrations.Tables{})
		require.NoError(t, err)
		require.Contains(t, def["0001_init.up.sql"], "EXISTS tmq_messages")
	}
	_, err := migrations.Render(migrations.DialectSQLite, migrations.Tables{Messages: "x; DROP TABLE y"})
	require.ErrorContains(t, err, "message-table-name")
	_, err = migrations.Render("oracle", migrations.Tables{})
	require.ErrorContains(t, err, "unknown dialect")
}

func TestSchemaTooNewError(t *testing.T) {
	t.Parallel()
	var err error = &migrations.SchemaTooNewError{Version: 7, Latest: 1}
	require.True(t, errors.Is(err, migrations.ErrSchemaTooNew))
	require.Equal(t, "database schema version 7 is newer than this tablemq (1); upgrade tablemq", err.Error())
	require.False(t, strings.Contains(err.Error(), "\n"))
}

func TestTables(t *testing.T) {
	t.Parallel()
	d := migrations.Tables{}.WithDefaults()
	require.Equal(t, "tmq_counters", d.Counters)
	require.Equal(t, "x_tmq_counters", migrations.WithPrefix("x_").Counters)
	require.NoError(t, d.Validate())
	bad := d
	bad.Counters = "1x"
	require.ErrorContains(t, bad.Validate(), "counter-table-name")
	bad.Counters = d.Messages
	require.ErrorContains(t, bad.Validate(), "already used")
}
