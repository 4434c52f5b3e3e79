package realtime

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/caddy-realtime/realtime/internal/benchtool"
)

// The `caddy realtime` commands talk to a running gateway: through its
// public HTTP API (--api) or through Caddy's admin endpoint (--admin, the
// default, localhost:2019), print the API's JSON answer on stdout, and
// exit 0 on success, 1 when the gateway refused or could not be reached,
// 2 on a usage error.
func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "realtime",
		Usage: "<publish|stats|presence|replay|disconnect|token|bench> [flags]",
		Short: "Talks to a running caddy-realtime gateway",
		Long: `
Publishes, reads stats, presence and replay buffers, and disconnects users of
a running gateway, printing the API's JSON answer. By default it goes through
Caddy's admin endpoint (--admin localhost:2019); --api <base> (or
REALTIME_API) uses the public HTTP API instead, with --key (or
REALTIME_API_KEY) as its bearer key. token mints an HS256 development token
for the jwt block; bench runs the load tool.

Exit codes: 0 done, 1 refused by the gateway or unreachable, 2 usage.`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.PersistentFlags().String("api", os.Getenv("REALTIME_API"), "public API base, e.g. http://127.0.0.1:8080/_realtime (default: the admin endpoint)")
			cmd.PersistentFlags().String("admin", "localhost:2019", "Caddy's admin address, used when --api is not set")
			cmd.PersistentFlags().String("gateway", "", "gateway name, through the admin endpoint when several run")
			cmd.PersistentFlags().String("key", os.Getenv("REALTIME_API_KEY"), "API key for --api")
			cmd.AddCommand(publishCommand(), statsCommand(), presenceCommand(), replayCommand(), disconnectCommand(), tokenCommand(), benchCommand())
		},
	})
}

// usageError makes a command exit with 2.
type usageError struct{ error }

// run adapts f to cobra with Caddy's exit-code handling: 0, 1, or 2 for
// a usageError.
func run(f func(cmd *cobra.Command) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		return caddycmd.WrapCommandFuncForCobra(func(caddycmd.Flags) (int, error) {
			err := f(cmd)
			var u usageError
			switch {
			case err == nil:
				return 0, nil
			case errors.As(err, &u):
				return 2, err
			default:
				return 1, err
			}
		})(cmd, args)
	}
}

func command(use, short string, flags func(*cobra.Command), f func(cmd *cobra.Command) error) *cobra.Command {
	c := &cobra.Command{Use: use, Short: short, Args: cobra.NoArgs, RunE: run(f)}
	if flags != nil {
		flags(c)
	}
	return c
}

func publishCommand() *cobra.Command {
	return command("publish", "Publishes an event (data from --data, or stdin), or a batch from --file", func(c *cobra.Command) {
		c.Flags().String("topic", "", "topic")
		c.Flags().String("event", "", "event name")
		c.Flags().String("data", "", "the event's data, JSON (default: read from stdin)")
		c.Flags().String("file", "", "a JSON array of {topic, event, data} to publish as one batch ('-' for stdin)")
	}, func(cmd *cobra.Command) error {
		topic, _ := cmd.Flags().GetString("topic")
		event, _ := cmd.Flags().GetString("event")
		data, _ := cmd.Flags().GetString("data")
		file, _ := cmd.Flags().GetString("file")
		var body []byte
		switch {
		case file != "":
			if topic != "" || event != "" || cmd.Flags().Changed("data") {
				return usageError{errors.New("--file publishes a batch: --topic, --event and --data go inside it")}
			}
			b, err := readInput(cmd, file)
			if err != nil {
				return usageError{err}
			}
			body = b
		case topic == "" || event == "":
			return usageError{errors.New("publish wants --topic and --event (or --file with a batch)")}
		default:
			raw := []byte(data)
			if !cmd.Flags().Changed("data") {
				b, err := io.ReadAll(cmd.InOrStdin())
				if err != nil {
					return err
				}
				raw = bytes.TrimSpace(b)
			}
			if !json.Valid(raw) {
				return usageError{fmt.Errorf("the data is not JSON: %q (a string needs quotes: '\"hi\"')", raw)}
			}
			body, _ = json.Marshal(struct {
				Topic string          `json:"topic"`
				Event string          `json:"event"`
				Data  json.RawMessage `json:"data"`
			}{topic, event, raw})
		}
		return call(cmd, http.MethodPost, "/publish", nil, body)
	})
}

func readInput(cmd *cobra.Command, name string) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(cmd.InOrStdin())
	}
	return os.ReadFile(name)
}

func statsCommand() *cobra.Command {
	return command("stats", "Prints the gateway's stats", nil, func(cmd *cobra.Command) error {
		return call(cmd, http.MethodGet, "/stats", nil, nil)
	})
}

func presenceCommand() *cobra.Command {
	return command("presence", "Lists a topic's presence", func(c *cobra.Command) {
		c.Flags().String("topic", "", "topic")
	}, func(cmd *cobra.Command) error {
		topic, _ := cmd.Flags().GetString("topic")
		if topic == "" {
			return usageError{errors.New("presence wants --topic")}
		}
		return call(cmd, http.MethodGet, "/presence", url.Values{"topic": {topic}}, nil)
	})
}

func replayCommand() *cobra.Command {
	return command("replay", "Prints a topic's replay buffer after a seq", func(c *cobra.Command) {
		c.Flags().String("topic", "", "topic")
		c.Flags().Uint64("since", 0, "the last seq already seen (0: everything buffered)")
	}, func(cmd *cobra.Command) error {
		topic, _ := cmd.Flags().GetString("topic")
		since, _ := cmd.Flags().GetUint64("since")
		if topic == "" {
			return usageError{errors.New("replay wants --topic")}
		}
		return call(cmd, http.MethodGet, "/replay", url.Values{"topic": {topic}, "since": {strconv.FormatUint(since, 10)}}, nil)
	})
}

func disconnectCommand() *cobra.Command {
	return command("disconnect", "Closes a user's or a connection's sockets", func(c *cobra.Command) {
		c.Flags().String("user", "", "user id (every connection of the user)")
		c.Flags().String("connection", "", "connection id")
		c.Flags().Int("code", 0, "close code: 4401 (identity invalid) or 4403 (banned); default: the API's")
	}, func(cmd *cobra.Command) error {
		user, _ := cmd.Flags().GetString("user")
		conn, _ := cmd.Flags().GetString("connection")
		code, _ := cmd.Flags().GetInt("code")
		if (user == "") == (conn == "") {
			return usageError{errors.New("disconnect wants one of --user and --connection")}
		}
		body, _ := json.Marshal(struct {
			User       string `json:"user,omitempty"`
			Connection string `json:"connection,omitempty"`
			Code       int    `json:"code,omitempty"`
		}{user, conn, code})
		return call(cmd, http.MethodPost, "/disconnect", nil, body)
	})
}

func benchCommand() *cobra.Command {
	return &cobra.Command{
		Use:                "bench <scenario> [flags]",
		Short:              "Runs the load tool (realtime-bench; `caddy realtime bench` alone lists the scenarios)",
		DisableFlagParsing: true,
		RunE: caddycmd.WrapCommandFuncForCobra(func(caddycmd.Flags) (int, error) {
			// Flag parsing is the load tool's: its arguments come as they are.
			args := os.Args
			for i, a := range args {
				if a == "bench" {
					args = args[i+1:]
					break
				}
			}
			if code := benchtool.Main(args); code != 0 {
				return code, fmt.Errorf("the load tool exited with %d", code)
			}
			return 0, nil
		}),
	}
}

// call sends one API request and prints the answer's body on stdout.
func call(cmd *cobra.Command, method, route string, query url.Values, body []byte) error {
	base, key, admin, err := endpoint(cmd)
	if err != nil {
		return usageError{err}
	}
	u := base + route
	if gw, _ := cmd.Flags().GetString("gateway"); gw != "" && admin {
		if query == nil {
			query = url.Values{}
		}
		query.Set("gateway", gw)
	}
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return usageError{err}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := clientFor(cmd).Do(req)
	if err != nil {
		return fmt.Errorf("reaching the gateway at %s: %w", base, err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading the answer of %s: %w", u, err)
	}
	out := cmd.OutOrStdout()
	_, _ = out.Write(bytes.TrimRight(answer, "\n"))
	_, _ = io.WriteString(out, "\n")
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s answered %s", method, route, resp.Status)
	}
	return nil
}

// clientFor returns the HTTP client for the flags: one that dials the
// admin socket for an admin address like unix//run/caddy-admin.sock, as
// Caddy writes them.
func clientFor(cmd *cobra.Command) *http.Client {
	api, _ := cmd.Flags().GetString("api")
	adminAddr, _ := cmd.Flags().GetString("admin")
	sock, ok := strings.CutPrefix(adminAddr, "unix/")
	if api != "" || !ok {
		return http.DefaultClient
	}
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
}

// endpoint returns the API base and key the flags name, and whether the
// base is Caddy's admin endpoint.
func endpoint(cmd *cobra.Command) (base, key string, admin bool, err error) {
	api, _ := cmd.Flags().GetString("api")
	key, _ = cmd.Flags().GetString("key")
	if api != "" {
		if u, err := url.Parse(api); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return "", "", false, fmt.Errorf("--api wants an http(s) URL like http://127.0.0.1:8080/_realtime, not %q", api)
		}
		return strings.TrimRight(api, "/"), key, false, nil
	}
	adminAddr, _ := cmd.Flags().GetString("admin")
	if strings.HasPrefix(adminAddr, "unix/") {
		adminAddr = "http://admin" // clientFor dials the socket
	} else if !strings.Contains(adminAddr, "://") {
		adminAddr = "http://" + adminAddr
	}
	// The admin endpoint needs no key; Caddy guards it.
	return strings.TrimRight(adminAddr, "/") + "/realtime", "", true, nil
}
