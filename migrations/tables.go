package migrations

import (
	"fmt"
	"regexp"
)

// Default table names. Every one can be changed so that two independent broker groups
// can share one database.
const (
	BindingsDefault      = "tmq_bindings"
	MessagesDefault      = "tmq_messages"
	LargeMessagesDefault = "tmq_large_messages"
	PagesDefault         = "tmq_pages"
	NodeManagerDefault   = "tmq_node_manager"
	DuplicateIDsDefault  = "tmq_duplicate_ids"
	CountersDefault      = "tmq_counters"
	MigrationsDefault    = "tmq_schema_migrations"
)

// Tables names the tables of one broker group. The zero value of a field means its
// default; call WithDefaults before use.
type Tables struct {
	Bindings      string `yaml:"bindings-table-name"`
	Messages      string `yaml:"message-table-name"`
	LargeMessages string `yaml:"large-message-table-name"`
	Pages         string `yaml:"page-store-table-name"`
	NodeManager   string `yaml:"node-manager-store-table-name"`
	DuplicateIDs  string `yaml:"duplicate-ids-table-name"`
	Counters      string `yaml:"counter-table-name"`
	Migrations    string `yaml:"migrations-table-name"`
}

// WithDefaults returns a copy of t with every empty name set to its default.
func (t Tables) WithDefaults() Tables {
	def := func(s *string, d string) {
		if *s == "" {
			*s = d
		}
	}
	def(&t.Bindings, BindingsDefault)
	def(&t.Messages, MessagesDefault)
	def(&t.LargeMessages, LargeMessagesDefault)
	def(&t.Pages, PagesDefault)
	def(&t.NodeManager, NodeManagerDefault)
	def(&t.DuplicateIDs, DuplicateIDsDefault)
	def(&t.Counters, CountersDefault)
	def(&t.Migrations, MigrationsDefault)
	return t
}

// WithPrefix returns the default names with prefix put in front of each, a shorthand
// for tests and for operators who run several groups in one database.
func WithPrefix(prefix string) Tables {
	d := Tables{}.WithDefaults()
	return Tables{
		Bindings:      prefix + d.Bindings,
		Messages:      prefix + d.Messages,
		LargeMessages: prefix + d.LargeMessages,
		Pages:         prefix + d.Pages,
		NodeManager:   prefix + d.NodeManager,
		DuplicateIDs:  prefix + d.DuplicateIDs,
		Counters:      prefix + d.Counters,
		Migrations:    prefix + d.Migrations,
	}
}

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,47}$`)

// Validate reports the first name that is not a plain SQL identifier (letters, digits
// and underscores, at most 48 characters, not starting with a digit) or that is used twice.
func (t Tables) Validate() error {
	seen := map[string]string{}
	for _, f := range []struct{ opt, name string }{
		{"bindings-table-name", t.Bindings},
		{"message-table-name", t.Messages},
		{"large-message-table-name", t.LargeMessages},
		{"page-store-table-name", t.Pages},
		{"node-manager-store-table-name", t.NodeManager},
		{"duplicate-ids-table-name", t.DuplicateIDs},
		{"counter-table-name", t.Counters},
		{"migrations-table-name", t.Migrations},
	} {
		if !identRE.MatchString(f.name) {
			return fmt.Errorf("%s: %q is not a valid table name (letters, digits and _, at most 48, not starting with a digit)", f.opt, f.name)
		}
		if other, ok := seen[f.name]; ok {
			return fmt.Errorf("%s: %q is already used by %s", f.opt, f.name, other)
		}
		seen[f.name] = f.opt
	}
	return nil
}
