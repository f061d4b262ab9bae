package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// CPU accounting: the CPU time the server (the broker process, or RabbitMQ's beam.smp),
// the database (every PostgreSQL process) and the load generator (this process) spend
// during a scenario, read from
// /proc, so that the table shows the cost of a message on each side. On a machine
// whose CPUs are shared by everything of the run, CPU per message is a steadier
// figure than messages per second: it hardly moves when something else runs beside.

// clockTick is the unit of utime and stime in /proc/<pid>/stat: USER_HZ, 100 on Linux
// whatever the kernel's own tick.
const clockTick = 10 * time.Millisecond

// procCPU returns the user+system CPU time of process pid so far, 0 if it cannot be read.
func procCPU(pid int) time.Duration {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0
	}
	// The command name, field 2, is in parentheses and may hold spaces: the fields
	// counted from 3 start after the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0
	}
	f := bytes.Fields(data[i+1:])
	if len(f) < 13 { // utime and stime are fields 14 and 15, f[11] and f[12]
		return 0
	}
	u, err1 := strconv.ParseInt(string(f[11]), 10, 64)
	s, err2 := strconv.ParseInt(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(u+s) * clockTick
}

// pidsNamed returns the processes whose command name (/proc/<pid>/comm) is name.
func pidsNamed(name string) []int {
	dirs, _ := os.ReadDir("/proc")
	var pids []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", d.Name(), "comm"))
		if err == nil && string(bytes.TrimSpace(comm)) == name {
			pids = append(pids, pid)
		}
	}
	return pids
}

// cpuOf returns the CPU time used so far by the processes named name, and their pids:
// a process that starts later (a new PostgreSQL backend) is counted from 0.
func cpuOf(name string) map[int]time.Duration {
	out := map[int]time.Duration{}
	for _, pid := range pidsNamed(name) {
		out[pid] = procCPU(pid)
	}
	return out
}

// cpuMeter measures the CPU of one scenario.
type cpuMeter struct {
	server   int                   // pid of the server process, or 0
	serverAt time.Duration         // its CPU time at the start
	dbName   string                // command name of the database's processes, or ""
	dbAt     map[int]time.Duration // their CPU times at the start
	loadAt   time.Duration         // this process's CPU time at the start
}

// startCPU starts measuring the server process pid (0: none) and the processes named
// db ("": none).
func startCPU(pid int, db string) *cpuMeter {
	m := &cpuMeter{server: pid, dbName: db, loadAt: procCPU(os.Getpid())}
	if pid > 0 {
		m.serverAt = procCPU(pid)
	}
	if db != "" {
		m.dbAt = cpuOf(db)
	}
	return m
}

// stop records in s the CPU time the server, the database and the load generator
// used since startCPU.
func (m *cpuMeter) stop(s *sample) {
	if s == nil {
		return
	}
	s.loadCPU = procCPU(os.Getpid()) - m.loadAt
	if m.server > 0 {
		s.serverCPU = procCPU(m.server) - m.serverAt
	}
	if m.dbName != "" {
		var d time.Duration
		for pid, now := range cpuOf(m.dbName) {
			d += now - m.dbAt[pid] // a process gone meanwhile is not counted: rare, small
		}
		s.dbCPU = d
	}
}

// dbProcess is the command name of the database server's processes for a store URL
// ("" where the database runs inside the broker or elsewhere).
func dbProcess(store string) string {
	switch {
	case len(store) >= 8 && (store[:8] == "postgres"):
		return "postgres"
	case len(store) >= 5 && store[:5] == "mysql":
		return "mariadbd"
	}
	return ""
}
