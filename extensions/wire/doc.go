// Package wire is the byte-level codec of the gateway's WebSocket protocol
// (docs/protocol.md): topic and event validation, topic patterns, envelope and
// control-frame encoding, and the classification of client frames.
//
// Everything here is pure and allocation-conscious: the hub encodes each
// published envelope once with this package and shares the bytes with every
// subscriber. Functions are safe for concurrent use.
package wire
