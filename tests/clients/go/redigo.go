// redigo (github.com/gomodule/redigo, Debian's golang-github-gomodule-redigo-dev) against
// seqd with default dial options: INCR/GET/GETSEQ, a pipeline, MULTI/EXEC and a pool shared
// by 8 goroutines. Run by tests/redis_clients.rs as `go run redigo.go PORT` in GOPATH mode
// (GO111MODULE=off, GOPATH=/usr/share/gocode); exits non-zero on a failure.
package main

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"

	"github.com/gomodule/redigo/redis"
)

func must(err error, what string) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
		os.Exit(1)
	}
}

func expect(ok bool, format string, args ...interface{}) {
	if !ok {
		fmt.Fprintf(os.Stderr, format+"\n", args...)
		os.Exit(1)
	}
}

func main() {
	addr := "127.0.0.1:" + os.Args[1]
	conn, err := redis.Dial("tcp", addr)
	must(err, "dial")
	defer conn.Close()

	first, err := redis.Int64(conn.Do("GETSEQ"))
	must(err, "GETSEQ")
	second, err := redis.Int64(conn.Do("GETSEQ"))
	must(err, "GETSEQ")
	expect(second == first+1, "GETSEQ %d then %d", first, second)

	_, err = redis.String(conn.Do("GET", "go-orders"))
	expect(err == redis.ErrNil, "GET of an unused key is nil, got %v", err)
	one, err := redis.Int64(conn.Do("INCR", "go-orders"))
	must(err, "INCR")
	twelve, err := redis.Int64(conn.Do("INCRBY", "go-orders", 11))
	must(err, "INCRBY")
	expect(one == 1 && twelve == 12, "INCR %d, INCRBY %d", one, twelve)
	got, err := redis.String(conn.Do("GET", "go-orders"))
	must(err, "GET")
	expect(got == "12", "GET %q", got)

	// A pipeline: 1000 requests written before any reply is read.
	for i := 0; i < 1000; i++ {
		must(conn.Send("GETSEQ", "go-pipelined"), "Send")
	}
	must(conn.Flush(), "Flush")
	var previous int64
	for i := 0; i < 1000; i++ {
		n, err := redis.Int64(conn.Receive())
		must(err, "Receive")
		expect(i == 0 || n == previous+1, "pipelined replies %d then %d", previous, n)
		previous = n
	}

	// A transaction: consecutive numbers, returned together at EXEC.
	must(conn.Send("MULTI"), "MULTI")
	must(conn.Send("GETSEQ", "go-tx"), "queue")
	must(conn.Send("GETSEQ", "go-tx"), "queue")
	replies, err := redis.Int64s(conn.Do("EXEC"))
	must(err, "EXEC")
	expect(len(replies) == 2 && replies[1] == replies[0]+1, "EXEC %v", replies)

	_, err = conn.Do("SET", "go-orders", 1)
	expect(err != nil && strings.Contains(err.Error(), "never goes back"), "SET answered %v", err)

	// A pool shared by 8 goroutines: every number unique.
	pool := &redis.Pool{MaxIdle: 8, Dial: func() (redis.Conn, error) { return redis.Dial("tcp", addr) }}
	defer pool.Close()
	var mu sync.Mutex
	var all []int64
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := pool.Get()
			defer c.Close()
			for i := 0; i < 500; i++ {
				n, err := redis.Int64(c.Do("GETSEQ", "go-pooled"))
				must(err, "pooled GETSEQ")
				mu.Lock()
				all = append(all, n)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	for i := 1; i < len(all); i++ {
		expect(all[i] != all[i-1], "number %d issued twice", all[i])
	}
	expect(len(all) == 4000, "%d numbers", len(all))
	fmt.Println("redigo: ok")
}
