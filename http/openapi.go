package httpapi

import (
	_ "embed" // for the OpenAPI document
	"net/http"
)

// OpenAPI is the OpenAPI 3.0.3 document of the API, served at GET /openapi.yaml.
//
//go:embed openapi.yaml
var OpenAPI []byte

// serveOpenAPI serves GET /openapi.yaml.
func serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(OpenAPI) // the client may have gone; nothing left to tell it
}
