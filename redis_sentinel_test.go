package realtime

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseSentinelURL(t *testing.T) {
	for _, tc := range []struct {
		name, url       string
		addrs           []string
		master          string
		user, pass      string
		db              int
		wantErr, secret string
	}{
		{name: "addresses, master and db", url: "sentinel://a:26380,b/mymaster?db=3",
			addrs: []string{"a:26380", "b:26379"}, master: "mymaster", db: 3},
		{name: "user and password are the master's", url: "sentinel://app:p%40ss@10.0.0.1:26379/m",
			addrs: []string{"10.0.0.1:26379"}, master: "m", user: "app", pass: "p@ss"},
		{name: "a lone userinfo with a colon is a password", url: "sentinel://:pw@h/m",
			addrs: []string{"h:26379"}, master: "m", pass: "pw"},
		{name: "an IPv6 sentinel", url: "sentinel://[::1]:26379,[::2]/m",
			addrs: []string{"[::1]:26379", "[::2]:26379"}, master: "m"},
		{name: "no master name", url: "sentinel://:secret@h:26379", wantErr: "needs the master set name", secret: "secret"},
		{name: "an empty master name", url: "sentinel://h:26379/", wantErr: "needs the master set name"},
		{name: "an empty address", url: "sentinel://a,,b/m", wantErr: "empty sentinel address"},
		{name: "a bad port", url: "sentinel://:secret@a:99999/m", wantErr: `sentinel address "a:99999" has a bad port`, secret: "secret"},
		{name: "no host", url: "sentinel://:26379/m", wantErr: "is not host:port"},
		{name: "an unknown parameter", url: "sentinel://a/m?master_set=x", wantErr: `unknown parameter "master_set"`},
		{name: "a bad db", url: "sentinel://a/m?db=x", wantErr: `db "x" is not a database number`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opt, err := parseSentinelURL(tc.url)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				if tc.secret != "" && strings.Contains(err.Error(), tc.secret) {
					t.Fatalf("error %q echoes the password", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(opt.InitAddress, tc.addrs) || opt.Sentinel.MasterSet != tc.master || opt.Username != tc.user ||
				opt.Password != tc.pass || opt.SelectDB != tc.db {
				t.Fatalf("got addrs %v master %q user %q pass %q db %d", opt.InitAddress, opt.Sentinel.MasterSet, opt.Username, opt.Password, opt.SelectDB)
			}
		})
	}
}

func TestSentinelClientOption(t *testing.T) {
	t.Setenv("RT_TEST_SENTINEL_PW", "spw")
	r := &RedisConfig{URL: "sentinel://:pw@a,b/m", SentinelPassword: "{env.RT_TEST_SENTINEL_PW}", TLS: true}
	opt, key, err := r.clientOption()
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case opt.Sentinel.Password != "spw" || opt.Password != "pw":
		t.Fatalf("sentinel password %q, master password %q", opt.Sentinel.Password, opt.Password)
	case opt.TLSConfig == nil || opt.Sentinel.TLSConfig == nil || opt.TLSConfig.ServerName != "":
		t.Fatal("tls must apply to the sentinels and to whichever master they name")
	case opt.Sentinel.TopologyRefreshInterval <= 0 || opt.Sentinel.Dialer.Timeout != 3*time.Second:
		t.Fatalf("sentinel refresh %s, dial timeout %s", opt.Sentinel.TopologyRefreshInterval, opt.Sentinel.Dialer.Timeout)
	case strings.Contains(key, "spw"):
		t.Fatal("the pool key holds the password in clear")
	}
	other := *r
	other.SentinelPassword = "else"
	if _, key2, _ := other.clientOption(); key2 == key {
		t.Fatal("two sentinel passwords share one pooled client")
	}
	if _, _, err := (&RedisConfig{URL: "redis://h", SentinelPassword: "x"}).clientOption(); err == nil ||
		!strings.Contains(err.Error(), "need a sentinel:// url") {
		t.Fatalf("sentinel_password without a sentinel url: %v", err)
	}
}
