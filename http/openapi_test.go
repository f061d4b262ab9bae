package httpapi

import (
	"slices"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
)

// routeKey is "METHOD /path" with chi's {param} syntax, which OpenAPI shares.
func routeKey(method, path string) string { return strings.ToUpper(method) + " " + path }

// routerRoutes walks the router and returns every route it serves.
func routerRoutes(t *testing.T) []string {
	t.Helper()
	mux, ok := New(newFakeBroker(), Config{}).(chi.Routes)
	require.True(t, ok, "New must return a chi router")
	var out []string
	for _, rt := range walkRoutes(mux) {
		out = append(out, routeKey(rt.method, rt.path))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// documentRoutes returns every operation of openapi.yaml.
func documentRoutes(t *testing.T) []string {
	t.Helper()
	var doc struct {
		OpenAPI string                    `yaml:"openapi"`
		Paths   map[string]map[string]any `yaml:"paths"`
	}
	require.NoError(t, yaml.Unmarshal(OpenAPI, &doc))
	require.Equal(t, "3.0.3", doc.OpenAPI)
	methods := []string{"get", "put", "post", "delete", "patch", "head", "options", "trace"}
	var out []string
	for path, item := range doc.Paths {
		for key, op := range item {
			if !slices.Contains(methods, key) {
				continue
			}
			opm, ok := op.(map[string]any)
			require.True(t, ok, "%s %s: not an operation object", key, path)
			require.Contains(t, opm, "responses", "%s %s: no responses", key, path)
			out = append(out, routeKey(key, path))
		}
	}
	slices.Sort(out)
	return out
}

// TestOpenAPICoversRoutes fails when a route is served but not documented, or
// documented but not served.
func TestOpenAPICoversRoutes(t *testing.T) {
	t.Parallel()
	served := routerRoutes(t)
	documented := documentRoutes(t)
	require.NotEmpty(t, served)
	for _, r := range served {
		require.Contains(t, documented, r, "route served but missing from openapi.yaml")
	}
	for _, r := range documented {
		require.Contains(t, served, r, "route in openapi.yaml but not served")
	}
	t.Logf("%d routes:\n%s", len(served), strings.Join(served, "\n"))
}

// TestOpenAPIRefsResolve checks that every local $ref points at a component.
func TestOpenAPIRefsResolve(t *testing.T) {
	t.Parallel()
	var doc map[string]any
	require.NoError(t, yaml.Unmarshal(OpenAPI, &doc))
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if ref, ok := x["$ref"].(string); ok {
				require.True(t, strings.HasPrefix(ref, "#/"), "external ref %q", ref)
				var cur any = doc
				for _, part := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
					m, ok := cur.(map[string]any)
					require.True(t, ok, "ref %q", ref)
					cur, ok = m[part]
					require.True(t, ok, "ref %q does not resolve", ref)
				}
			}
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(doc)
}
