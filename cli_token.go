package realtime

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/golang-jwt/jwt/v5"
	"github.com/spf13/cobra"
)

// tokenCommand is `caddy realtime token`: it prints an HS256 token, and
// nothing else, on stdout, so that `TOKEN=$(caddy realtime token …)` works.
func tokenCommand() *cobra.Command {
	var (
		secret, secretEnv, sub, ttl, iss, aud string
		topics, claims                        []string
	)
	c := &cobra.Command{
		Use:   "token --secret <secret>|--secret-env <NAME> --sub <user> [--topics <pattern,...>] [--ttl <duration>] [--claim <k=v>]...",
		Short: "Mint an HS256 development token",
		Long: `
Mints an HS256 token for a realtime jwt block configured with the same
secret, and prints it alone on stdout.

--topics sets the topics claim (a list of topic patterns, comma-separated or
repeated); --claim k=v adds a claim, whose value is read as JSON when it is
valid JSON (n=3, ok=true, tags=["a"]) and as a string otherwise.
--secret-env reads the secret from an environment variable, which keeps it
out of the shell history and the process list.
`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key := secret
			if secretEnv != "" {
				if key != "" {
					return errors.New("--secret and --secret-env are exclusive")
				}
				key = os.Getenv(secretEnv)
				if key == "" {
					return fmt.Errorf("environment variable %s is empty or unset", secretEnv)
				}
			}
			if key == "" {
				return errors.New("--secret or --secret-env is required")
			}
			if sub == "" {
				return errors.New("--sub is required")
			}
			life, err := caddy.ParseDuration(ttl)
			if err != nil || life <= 0 {
				return fmt.Errorf("bad --ttl '%s': want a positive duration such as 10m", ttl)
			}
			now := time.Now()
			m := jwt.MapClaims{}
			for _, kv := range claims {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return fmt.Errorf("bad --claim '%s': want k=v", kv)
				}
				var val any = v
				if json.Valid([]byte(v)) {
					_ = json.Unmarshal([]byte(v), &val)
				}
				m[k] = val
			}
			m["sub"], m["iat"], m["exp"] = sub, now.Unix(), now.Add(life).Unix()
			if len(topics) > 0 {
				m["topics"] = topics
			}
			if iss != "" {
				m["iss"] = iss
			}
			if aud != "" {
				m["aud"] = aud
			}
			signed, err := jwt.NewWithClaims(jwt.SigningMethodHS256, m).SignedString([]byte(key))
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), signed)
			return err
		},
	}
	f := c.Flags()
	f.StringVar(&secret, "secret", "", "the HS256 secret")
	f.StringVar(&secretEnv, "secret-env", "", "the name of an environment variable holding the secret")
	f.StringVar(&sub, "sub", "", "the user (sub claim)")
	f.StringSliceVar(&topics, "topics", nil, "topic patterns of the topics claim")
	f.StringVar(&ttl, "ttl", "10m", "how long the token is valid")
	f.StringVar(&iss, "iss", "", "the issuer (iss claim)")
	f.StringVar(&aud, "aud", "", "the audience (aud claim)")
	f.StringArrayVar(&claims, "claim", nil, "another claim, k=v (repeatable)")
	return c
}
