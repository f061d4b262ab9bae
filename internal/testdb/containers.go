package testdb

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tcmysql "github.com/testcontainers/testcontainers-go/modules/mysql"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
)

// Container images used when no server is reachable.
const (
	PostgresImage = "postgres:15-alpine"
	MariaDBImage  = "mariadb:10.11"
)

// dockerAvailable reports whether a Docker engine answers its /_ping endpoint. It
// never starts anything.
func dockerAvailable(ctx context.Context) error {
	network, addr := "", ""
	if h := os.Getenv("DOCKER_HOST"); h != "" {
		u, err := url.Parse(h)
		if err != nil {
			return fmt.Errorf("DOCKER_HOST %q: %w", h, err)
		}
		switch u.Scheme {
		case "unix":
			network, addr = "unix", u.Path
		case "tcp":
			network, addr = "tcp", u.Host
		default:
			return fmt.Errorf("DOCKER_HOST %q: unsupported scheme", h)
		}
	} else {
		candidates := []string{"/var/run/docker.sock"}
		if home, err := os.UserHomeDir(); err == nil {
			candidates = append(candidates, filepath.Join(home, ".docker", "run", "docker.sock"))
		}
		for _, c := range candidates {
			if _, err := os.Stat(c); err == nil {
				network, addr = "unix", c
				break
			}
		}
		if addr == "" {
			return errNoDocker
		}
	}
	client := &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}},
	}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/_ping", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("docker engine at %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("docker engine at %s: ping answered %s", addr, resp.Status)
	}
	return nil
}

// startContainer starts one database container for this test binary and returns its
// base DSN. The container is removed by testcontainers' reaper when the binary exits.
func startContainer(ctx context.Context, backend string) (string, error) {
	switch backend {
	case BackendPostgres:
		c, err := tcpostgres.Run(ctx, PostgresImage,
			tcpostgres.WithDatabase("test"),
			tcpostgres.WithUsername("postgres"),
			tcpostgres.WithPassword("postgres"),
			tcpostgres.BasicWaitStrategies(),
		)
		if err != nil {
			return "", fmt.Errorf("start %s: %w", PostgresImage, err)
		}
		dsn, err := c.ConnectionString(ctx, "sslmode=disable")
		if err != nil {
			_ = testcontainers.TerminateContainer(c)
			return "", fmt.Errorf("%s connection string: %w", PostgresImage, err)
		}
		return dsn, nil
	case BackendMySQL:
		c, err := tcmysql.Run(ctx, MariaDBImage,
			tcmysql.WithDatabase("test"),
			tcmysql.WithUsername("root"),
			tcmysql.WithPassword("test"),
		)
		if err != nil {
			return "", fmt.Errorf("start %s: %w", MariaDBImage, err)
		}
		dsn, err := c.ConnectionString(ctx)
		if err != nil {
			_ = testcontainers.TerminateContainer(c)
			return "", fmt.Errorf("%s connection string: %w", MariaDBImage, err)
		}
		return "mysql://" + strings.TrimPrefix(dsn, "mysql://"), nil
	}
	return "", fmt.Errorf("no container for backend %q", backend)
}
