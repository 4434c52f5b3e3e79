//go:build !linux

package benchtool

import "errors"

// The epoll reader is Linux-only; elsewhere every connection has a read
// goroutine (-reader goroutine).

const epollAvailable = false

type epollReader struct{}

type epollLoop struct{}

type epState struct{}

func newEpollReader(*runner, int) (*epollReader, error) {
	return nil, errors.New("the epoll reader needs Linux")
}

func (*epollReader) add(*client) error { return errors.New("the epoll reader needs Linux") }

func writeFD(int, []byte) error { return errors.New("no raw sockets here") }

func shutdownFD(*wsConn) {}

func closeFD(int) error { return nil }
