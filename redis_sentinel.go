package realtime

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/redis/rueidis"
)

const sentinelScheme = "sentinel://"

// parseSentinelURL reads
// sentinel://[user:password@]host[:port][,host[:port]…]/<master>[?db=N].
// Its errors never quote the URL, which may hold a password.
func parseSentinelURL(raw string) (rueidis.ClientOption, error) {
	var opt rueidis.ClientOption
	rest := strings.TrimPrefix(raw, sentinelScheme)
	rest, query, _ := strings.Cut(rest, "?")
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		user, pass, hasPass := strings.Cut(rest[:at], ":")
		var err1, err2 error
		opt.Username, err1 = url.PathUnescape(user)
		opt.Password, err2 = url.PathUnescape(pass)
		if err1 != nil || err2 != nil {
			return opt, errors.New("redis: sentinel url: bad escape in the credentials")
		}
		if !hasPass {
			// Like redis://secret@host: a lone userinfo is the password.
			opt.Username, opt.Password = "", opt.Username
		}
		rest = rest[at+1:]
	}
	hosts, master, ok := strings.Cut(rest, "/")
	if !ok || master == "" || strings.Contains(master, "/") {
		return opt, errors.New("redis: sentinel url needs the master set name after the addresses: sentinel://host:26379[,host:26379…]/<master>")
	}
	for _, h := range strings.Split(hosts, ",") {
		if h == "" {
			return opt, errors.New("redis: sentinel url: empty sentinel address")
		}
		if !strings.Contains(h, ":") || strings.HasSuffix(h, "]") {
			h = net.JoinHostPort(strings.Trim(h, "[]"), "26379")
		}
		host, port, err := net.SplitHostPort(h)
		if err != nil || host == "" {
			return opt, fmt.Errorf("redis: sentinel url: sentinel address %q is not host:port", h)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return opt, fmt.Errorf("redis: sentinel url: sentinel address %q has a bad port", h)
		}
		opt.InitAddress = append(opt.InitAddress, net.JoinHostPort(host, port))
	}
	opt.Sentinel.MasterSet = master
	if query != "" {
		q, err := url.ParseQuery(query)
		if err != nil {
			return opt, errors.New("redis: sentinel url: bad query")
		}
		for k, v := range q {
			if k != "db" {
				return opt, fmt.Errorf("redis: sentinel url: unknown parameter %q (the one parameter is db)", k)
			}
			n, err := strconv.Atoi(v[len(v)-1])
			if err != nil || n < 0 {
				return opt, fmt.Errorf("redis: sentinel url: db %q is not a database number", v[len(v)-1])
			}
			opt.SelectDB = n
		}
	}
	return opt, nil
}
