package handlers

import (
	"net/http"
	"testing"
)

func TestRemoteHost(t *testing.T) {
	for _, tc := range []struct{ addr, want string }{
		{"203.0.113.9:51234", "203.0.113.9"},
		{"[2001:db8::1]:443", "2001:db8::1"},
		{"203.0.113.9", "203.0.113.9"},
		{"[2001:db8::1]", "2001:db8::1"},
		{"2001:db8::1", "2001:db8::1"},
		{"@", "@"},
	} {
		if got := remoteHost(&http.Request{RemoteAddr: tc.addr}); got != tc.want {
			t.Errorf("remoteHost(%q) = %q, want %q", tc.addr, got, tc.want)
		}
	}
}
