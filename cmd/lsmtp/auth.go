package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/lsmtp/lsmtp/engine"
)

// stdin is where `lsmtp auth hash` reads the password; tests replace it.
var stdin io.Reader = os.Stdin

// authCommand is `lsmtp auth hash [--scheme bcrypt|argon2id]`: it reads a
// password from the first line of standard input and prints a hash for
// a user:hash line of --auth-file. The password is never an argument, so
// that it stays out of the shell history and process listings.
func authCommand(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "hash" {
		fmt.Fprintln(stderr, "usage: lsmtp auth hash [--scheme bcrypt|argon2id] < password")
		return exitUsage
	}
	fs := flag.NewFlagSet("lsmtp auth hash", flag.ContinueOnError)
	fs.SetOutput(stderr)
	scheme := fs.String("scheme", "bcrypt", "bcrypt (cost 12) or argon2id (m=64 MiB, t=3, p=4)")
	if err := fs.Parse(args[1:]); err != nil {
		return exitUsage
	}
	line, err := bufio.NewReader(stdin).ReadBytes('\n')
	if err != nil && err != io.EOF {
		fmt.Fprintln(stderr, "lsmtp: reading the password:", err)
		return exitProblems
	}
	pass := bytes.TrimRight(line, "\r\n")
	defer clear(line)
	if len(pass) == 0 {
		fmt.Fprintln(stderr, "lsmtp: no password on standard input")
		return exitProblems
	}
	if len(pass) > 72 && *scheme == "bcrypt" {
		// bcrypt uses the first 72 octets only and refuses longer input.
		fmt.Fprintln(stderr, "lsmtp: bcrypt takes at most 72 octets; use --scheme argon2id")
		return exitProblems
	}
	h, err := engine.HashPassword(pass, *scheme)
	if err != nil {
		fmt.Fprintln(stderr, "lsmtp:", err)
		return exitProblems
	}
	fmt.Fprintln(stdout, h)
	return exitOK
}
