// Package caddytest holds end-to-end tests of caddy-realtime's Caddy
// integration.
package caddytest

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-realtime/realtime"
)

var update = flag.Bool("update", false, "rewrite the JSON part of the success goldens in testdata/adapt with the adapter's output")

// goldenSeparator splits a golden file into its Caddyfile and its expectation.
const goldenSeparator = "----------"

// TestAdaptCaddyfile adapts every testdata/adapt/*.caddyfiletest golden:
// a Caddyfile, a line "----------", then the expectation. A file named
// *_error.caddyfiletest must fail to adapt with an error containing its
// expectation (one line of text, usually ending in ", at Caddyfile:LINE");
// any other file must adapt, without warnings, to its expectation, the
// JSON config (compared ignoring whitespace). Run with -update to rewrite
// the JSON of success goldens.
func TestAdaptCaddyfile(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "adapt", "*.caddyfiletest"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no goldens in testdata/adapt")
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".caddyfiletest")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			data = bytes.ReplaceAll(data, []byte("\r\n"), []byte("\n"))
			input, expected, ok := strings.Cut(string(data), "\n"+goldenSeparator+"\n")
			if !ok {
				t.Fatalf("%s: no %q line between the Caddyfile and the expectation", file, goldenSeparator)
			}
			caddyfile := strings.TrimSpace(input) + "\n"
			expected = strings.TrimSpace(expected)

			adapter := caddyconfig.GetAdapter("caddyfile")
			if adapter == nil {
				t.Fatal("caddyfile adapter not registered")
			}
			got, warnings, err := adapter.Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})

			if strings.HasSuffix(name, "_error") {
				if expected == "" {
					t.Fatalf("%s: an error golden needs the expected error text", file)
				}
				if err == nil {
					t.Fatalf("adapted without error, want an error containing:\n%s", expected)
				}
				if !strings.Contains(err.Error(), expected) {
					t.Fatalf("got error:\n%s\nwant one containing:\n%s", err, expected)
				}
				return
			}

			if err != nil {
				t.Fatalf("adapting: %v", err)
			}
			for _, w := range warnings {
				t.Errorf("warning: %s:%d: %s: %s", w.File, w.Line, w.Directive, w.Message)
			}
			var pretty bytes.Buffer
			if err := json.Indent(&pretty, got, "", "\t"); err != nil {
				t.Fatalf("adapter output is not JSON: %v\n%s", err, got)
			}

			if *update {
				out := caddyfile + goldenSeparator + "\n" + pretty.String() + "\n"
				if err := os.WriteFile(file, []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}

			var gotCompact, wantCompact bytes.Buffer
			if err := json.Compact(&gotCompact, got); err != nil {
				t.Fatal(err)
			}
			if err := json.Compact(&wantCompact, []byte(expected)); err != nil {
				t.Fatalf("%s: expectation is not JSON (name error goldens *_error.caddyfiletest): %v", file, err)
			}
			if !bytes.Equal(gotCompact.Bytes(), wantCompact.Bytes()) {
				t.Errorf("adapted JSON differs from %s (run with -update to accept):\ngot:\n%s\nwant:\n%s", file, pretty.String(), expected)
			}
		})
	}
}
