package caddytest

import (
	"bytes"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// cli runs `caddy realtime <args>` with stdin and returns stdout, stderr
// and the exit code.
func cli(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(caddyBin, append([]string{"realtime"}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), errb.String(), 0
	case errors.As(err, &ee):
		return out.String(), errb.String(), ee.ExitCode()
	}
	t.Fatalf("caddy realtime %v: %v", args, err)
	return "", "", -1
}

// The `caddy realtime` commands print the API's JSON answer and exit 0,
// 1 when the gateway refuses, 2 on a usage error.
func TestCLICommandsAgainstARunningCaddy(t *testing.T) {
	in := startCaddy(t, `
	realtime {
		api /_realtime
		shutdown_spread 0
		replay chat
		presence room
	}`)
	api := "--api=" + in.url("/_realtime")
	c := dial(t, in)
	id := c.welcome()
	current(c)
	c.send(`{"type":"subscribe-batch","topics":["chat","room"],"ref":1}`)
	waitFor(t, 5*time.Second, "the client in the room", func() bool {
		out, _, code := cli(t, "", "presence", api, "--topic", "room")
		return code == 0 && strings.Contains(out, id)
	})

	for _, tc := range []struct {
		name  string
		stdin string
		args  []string
		want  string
	}{
		{"data from a flag", "", []string{"publish", api, "--topic", "chat", "--event", "e", "--data", `{"n":1}`}, `{"seq":1}`},
		{"data from stdin", `"two"`, []string{"publish", api, "--topic", "chat", "--event", "e"}, `{"seq":2}`},
		{"a batch from stdin", `[{"topic":"chat","event":"e","data":3},{"topic":"chat","event":"e","data":4}]`, []string{"publish", api, "--file", "-"}, `{"seqs":[3,4]}`},
		{"replay", "", []string{"replay", api, "--topic", "chat", "--since", "3"}, `{"events":[{"seq":4,"event":"e","data":4}],"seq":4,"truncated":false}`},
		{"stats", "", []string{"stats", api}, `"connections":1`},
		{"stats through the admin socket", "", []string{"stats", "--admin=unix/" + filepath.Join(in.dir, "admin.sock")}, `"connections":1`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := cli(t, tc.stdin, tc.args...)
			if code != 0 || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want 0 and %s", code, out, errOut, tc.want)
			}
		})
	}
	// The gateway refuses: exit 1, its JSON error on stdout.
	if out, _, code := cli(t, "", "publish", api, "--topic", "__system", "--event", "e", "--data", "1"); code != 1 || !strings.Contains(out, "INVALID_TOPIC") {
		t.Fatalf("publish to a system topic: exit %d, stdout %q; want 1 and INVALID_TOPIC", code, out)
	}
	// Usage errors: exit 2, nothing sent.
	for _, args := range [][]string{
		{"publish", api, "--topic", "chat"},
		{"publish", api, "--topic", "chat", "--event", "e", "--data", "not json"},
		{"disconnect", api},
		{"publish", "--api=ftp://x", "--topic", "chat", "--event", "e", "--data", "1"},
		{"bench"},
	} {
		if _, errOut, code := cli(t, "", args...); code != 2 {
			t.Errorf("caddy realtime %v: exit %d (stderr %q), want 2", args, code, errOut)
		}
	}
	if out, _, code := cli(t, "", "disconnect", api, "--connection", id, "--code", "4403"); code != 0 {
		t.Fatalf("disconnect: exit %d, stdout %q", code, out)
	}
	if got := c.closeStatus(5 * time.Second); got != 4403 {
		t.Fatalf("close %d after the CLI disconnect, want 4403", got)
	}
}
