package wire

import (
	"slices"
	"testing"
)

func TestEachMember(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		obj  string
		want []string // key=value, raw tokens
	}{
		{"an empty object has no members", `{}`, nil},
		{"an empty object with whitespace has no members", "{ \n }", nil},
		{"members come in document order with raw tokens", `{"b":1,"a":"x"}`, []string{`"b"=1`, `"a"="x"`}},
		{"duplicate keys are all reported", `{"a":1,"a":2}`, []string{`"a"=1`, `"a"=2`}},
		{"escaped keys are passed raw", `{"typ\u0065":true}`, []string{`"typ\u0065"=true`}},
		{"nested values are one token each", `{"o":{"x":[1,{"y":"}"}]},"n":null}`, []string{`"o"={"x":[1,{"y":"}"}]}`, `"n"=null`}},
		{"whitespace around tokens is skipped", "{ \"a\" :\t-1.5e3 ,\r\n\"b\" : [ ] }", []string{`"a"=-1.5e3`, `"b"=[ ]`}},
		{"quotes and backslashes inside strings are handled", `{"a\"b":"c\\","d":"\"}"}`, []string{`"a\"b"="c\\"`, `"d"="\"}"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got []string
			EachMember([]byte(tt.obj), func(k, v []byte) { got = append(got, string(k)+"="+string(v)) })
			if !slices.Equal(got, tt.want) {
				t.Errorf("EachMember(%s) = %q, want %q", tt.obj, got, tt.want)
			}
		})
	}
}

func TestEachElement(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		arr  string
		stop int // stop after this many elements; 0 = never
		want []string
	}{
		{"an empty array has no elements", `[]`, 0, nil},
		{"an empty array with whitespace has no elements", "[ \t ]", 0, nil},
		{"elements come in order with raw tokens", `["a",1,null,true,{"k":[2]},[3]]`, 0, []string{`"a"`, `1`, `null`, `true`, `{"k":[2]}`, `[3]`}},
		{"whitespace around elements is skipped", "[ 1 ,\n\"x\" ]", 0, []string{`1`, `"x"`}},
		{"returning false stops the walk", `[1,2,3,4]`, 2, []string{`1`, `2`}},
		{"brackets inside strings do not end the array", `["]","[",","]`, 0, []string{`"]"`, `"["`, `","`}},
		{"a quote after an even run of backslashes ends the string", `["\\\\","a\\\"]\\\\",""]`, 0, []string{`"\\\\"`, `"a\\\"]\\\\"`, `""`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got []string
			EachElement([]byte(tt.arr), func(v []byte) bool {
				got = append(got, string(v))
				return tt.stop == 0 || len(got) < tt.stop
			})
			if !slices.Equal(got, tt.want) {
				t.Errorf("EachElement(%s) = %q, want %q", tt.arr, got, tt.want)
			}
		})
	}
}
