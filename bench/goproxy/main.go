// The Go net/http peer: what a user would write instead of hijack.
//
//	goproxy PORT
//
// CONNECT: http.Hijacker, dial the target, answer 200, copy both ways with
// io.Copy (which uses splice(2) between TCP sockets on Linux), half-close
// each way. Any other request with "Upgrade: echo": hijack, answer 101 and
// echo. Anything else: a hello world.
package main

import (
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func pipe(dst, src *net.TCPConn, done chan<- struct{}) {
	io.Copy(dst, src)
	dst.CloseWrite()
	done <- struct{}{}
}

func connect(w http.ResponseWriter, r *http.Request) {
	upstream, err := net.DialTimeout("tcp", r.Host, 10*time.Second)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	conn, buffered, err := w.(http.Hijacker).Hijack()
	if err != nil {
		upstream.Close()
		return
	}
	conn.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n"))
	// Bytes the client sent behind the CONNECT head go first.
	if n := buffered.Reader.Buffered(); n > 0 {
		early, _ := buffered.Reader.Peek(n)
		upstream.Write(early)
	}
	client, up := conn.(*net.TCPConn), upstream.(*net.TCPConn)
	done := make(chan struct{}, 2)
	go pipe(up, client, done)
	go pipe(client, up, done)
	<-done
	<-done
	client.Close()
	up.Close()
}

func echo(w http.ResponseWriter, r *http.Request) {
	conn, buffered, err := w.(http.Hijacker).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	conn.Write([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"))
	buf := make([]byte, 65536)
	for {
		n, err := buffered.Read(buf)
		if n > 0 {
			if _, werr := conn.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func main() {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodConnect:
			connect(w, r)
		case r.Header.Get("Upgrade") == "echo":
			echo(w, r)
		default:
			w.Header().Set("Content-Type", "text/plain")
			w.Write([]byte("Hello, world!"))
		}
	})
	server := &http.Server{Addr: "127.0.0.1:" + os.Args[1], Handler: handler}
	if err := server.ListenAndServe(); err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
}
