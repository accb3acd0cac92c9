package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// Every flag of `walrelay relay` and `walrelay manager` can also come from
// the environment (WALRELAY_<FLAG>, dashes as underscores) and from a YAML
// file (--config, keys named as the flags); flags win over the environment,
// which wins over the file.

func envName(flag string) string {
	return "WALRELAY_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

type fileValue struct {
	value string
	line  int
}

// readConfigFile reads a flat YAML mapping of scalars.
func readConfigFile(path string) (map[string]fileValue, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out := map[string]fileValue{}
	if len(doc.Content) == 0 {
		return out, nil
	}
	m := doc.Content[0]
	if m.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s:%d: want a mapping of setting: value", path, m.Line)
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if v.Kind != yaml.ScalarNode {
			return nil, fmt.Errorf("%s:%d: %s: want a single value", path, v.Line, k.Value)
		}
		if _, dup := out[k.Value]; dup {
			return nil, fmt.Errorf("%s:%d: %s is set twice", path, k.Line, k.Value)
		}
		out[k.Value] = fileValue{v.Value, k.Line}
	}
	return out, nil
}

// applySettings fills the flags not given on the command line from the
// environment, then from the file (if any), and says where each came from.
func applySettings(fs *pflag.FlagSet, file string) (map[string]string, error) {
	sources := map[string]string{}
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed {
			sources[f.Name] = "flag"
		}
	})
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if sources[f.Name] != "" || f.Name == "config" {
			return
		}
		if v, ok := os.LookupEnv(envName(f.Name)); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", envName(f.Name), err))
				return
			}
			sources[f.Name] = "env"
		}
	})
	if file != "" {
		vals, err := readConfigFile(file)
		if err != nil {
			return nil, err
		}
		keys := make([]string, 0, len(vals))
		for k := range vals {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool { return vals[keys[i]].line < vals[keys[j]].line })
		for _, k := range keys {
			fv := vals[k]
			if fs.Lookup(k) == nil || k == "config" {
				errs = append(errs, fmt.Errorf("%s:%d: unknown setting %q", file, fv.line, k))
				continue
			}
			if sources[k] != "" {
				continue
			}
			if err := fs.Set(k, fv.value); err != nil {
				errs = append(errs, fmt.Errorf("%s:%d: %s: %w", file, fv.line, k, err))
				continue
			}
			sources[k] = "file"
		}
	}
	return sources, errors.Join(errs...)
}

// addConfigFlag gives cmd a --config flag applied before it runs.
func addConfigFlag(cmd *cobra.Command, dst *string) {
	cmd.Flags().StringVar(dst, "config", "", "YAML file of settings named as the flags (flags > WALRELAY_* environment > file)")
	cmd.PreRunE = func(cmd *cobra.Command, _ []string) error {
		if *dst == "" {
			*dst = os.Getenv("WALRELAY_CONFIG")
		}
		_, err := applySettings(cmd.Flags(), *dst)
		return err
	}
}

var passwordKV = regexp.MustCompile(`(?i)(password\s*=\s*)('(\\.|[^'])*'|\S+)`)

// mask hides secrets in a setting's value for display.
func mask(name, value string) string {
	if strings.Contains(name, "password") || strings.Contains(name, "secret") {
		if value == "" {
			return ""
		}
		return "****"
	}
	return passwordKV.ReplaceAllString(value, "${1}****")
}

// printSettings lists every setting with its source, secrets masked.
func printSettings(w io.Writer, fs *pflag.FlagSet, sources map[string]string) {
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name == "config" || f.Name == "help" {
			return
		}
		src := sources[f.Name]
		if src == "" {
			src = "default"
		}
		fmt.Fprintf(w, "%-26s %-48s %s\n", f.Name, mask(f.Name, f.Value.String()), src)
	})
}

func newConfigCmd() *cobra.Command {
	var role string
	check := &cobra.Command{
		Use:   "check FILE",
		Short: "Validate a config file and print the effective settings (secrets masked)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var target *cobra.Command
			var validate func() error
			switch role {
			case "relay":
				var f relayFlags
				target = newRelayCmdWith(&f)
				validate = func() error { _, err := f.settings(); return err }
			case "manager":
				target = newManagerCmd()
				validate = func() error { return nil }
			default:
				return fmt.Errorf("--role %q: want relay or manager", role)
			}
			sources, err := applySettings(target.Flags(), args[0])
			if err != nil {
				return err
			}
			var missing []string
			for _, name := range []string{"node-id", "data-dir"} {
				if target.Flags().Lookup(name) != nil && sources[name] == "" {
					missing = append(missing, name)
				}
			}
			if len(missing) > 0 {
				return fmt.Errorf("%s: required: %s", args[0], strings.Join(missing, ", "))
			}
			if err := validate(); err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: ok (%s)\n", args[0], role)
			printSettings(cmd.OutOrStdout(), target.Flags(), sources)
			return nil
		},
	}
	check.Flags().StringVar(&role, "role", "relay", "what the file configures: relay or manager")
	cmd := &cobra.Command{Use: "config", Short: "Configuration files"}
	cmd.AddCommand(check)
	return cmd
}
