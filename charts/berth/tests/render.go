// A stand-in for `helm template` where helm cannot be installed: it renders a
// chart with the same libraries helm 3 uses (Go's text/template, sprig v3,
// sigs.k8s.io/yaml) and the same rules, as far as this chart needs them:
//
//   - values: the chart's values.yaml, coalesced with -f files the way helm
//     does (maps merge, later files win, a null from the user deletes the
//     default); written with -values-out as JSON so that the caller validates
//     them against values.schema.json, as helm does before rendering;
//   - functions: sprig's TxtFuncMap without env/expandenv, plus helm's
//     include, required, fail, toYaml, fromYaml, toJson, fromJson and lookup
//     (empty, as in `helm template`); no tpl and no toToml (the chart does
//     not use them, so a template that did would fail to parse here);
//   - objects: .Values, .Release, .Chart (Chart.yaml's fields), .Capabilities,
//     .Template, .Files (Get and GetBytes);
//   - every templates/ file is parsed into one template set named
//     <chart>/templates/<file>; files starting with "_" only define
//     templates; missingkey=zero and "<no value>" removed, as helm does;
//   - output: each non-empty manifest as "---\n# Source: <name>\n<text>";
//     NOTES.txt goes to -notes-out instead (helm prints it on install).
//
// Build in GOPATH mode against Debian's packaged sources:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o render render.go
//
// Usage: render -chart DIR [-f values.yaml]... [-name R] [-namespace N]
//
//	[-values-out F] [-notes-out F] [-kube-version v1.31.0]
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"sigs.k8s.io/yaml"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// Metadata is helm's chart.Metadata (what .Chart exposes).
type Metadata struct {
	Name         string            `json:"name,omitempty"`
	Home         string            `json:"home,omitempty"`
	Sources      []string          `json:"sources,omitempty"`
	Version      string            `json:"version,omitempty"`
	Description  string            `json:"description,omitempty"`
	Keywords     []string          `json:"keywords,omitempty"`
	Maintainers  []interface{}     `json:"maintainers,omitempty"`
	Icon         string            `json:"icon,omitempty"`
	APIVersion   string            `json:"apiVersion,omitempty"`
	Condition    string            `json:"condition,omitempty"`
	Tags         string            `json:"tags,omitempty"`
	AppVersion   string            `json:"appVersion,omitempty"`
	Deprecated   bool              `json:"deprecated,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	KubeVersion  string            `json:"kubeVersion,omitempty"`
	Dependencies []interface{}     `json:"dependencies,omitempty"`
	Type         string            `json:"type,omitempty"`
}

// KubeVersion is helm's chartutil.KubeVersion.
type KubeVersion struct {
	Version string
	Major   string
	Minor   string
}

func (kv *KubeVersion) String() string   { return kv.Version }
func (kv *KubeVersion) GitVersion() string { return kv.Version }

// VersionSet is helm's chartutil.VersionSet.
type VersionSet []string

// Has reports whether an API version is available.
func (v VersionSet) Has(apiVersion string) bool {
	for _, x := range v {
		if x == apiVersion {
			return true
		}
	}
	return false
}

// Capabilities is helm's chartutil.Capabilities.
type Capabilities struct {
	KubeVersion KubeVersion
	APIVersions VersionSet
	HelmVersion map[string]string
}

// Files is helm's engine files (the subset this renderer offers).
type Files map[string][]byte

// GetBytes returns a file's bytes, or nil.
func (f Files) GetBytes(name string) []byte { return f[name] }

// Get returns a file's text, or "".
func (f Files) Get(name string) string { return string(f[name]) }

func readValues(file string) (map[string]interface{}, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	vals := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &vals); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if vals == nil {
		vals = map[string]interface{}{}
	}
	return vals, nil
}

// mergeMaps is helm's cli/values mergeMaps: b wins, maps merge.
func mergeMaps(a, b map[string]interface{}) map[string]interface{} {
	out := make(map[string]interface{}, len(a))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		if v, ok := v.(map[string]interface{}); ok {
			if bv, ok := out[k]; ok {
				if bv, ok := bv.(map[string]interface{}); ok {
					out[k] = mergeMaps(bv, v)
					continue
				}
			}
		}
		out[k] = v
	}
	return out
}

// coalesceTables is helm's chartutil coalesceTablesFullKey (coalesce, not
// merge): dst (the user's) wins; a nil in dst deletes the default.
func coalesceTables(dst, src map[string]interface{}, prefix string) map[string]interface{} {
	if dst == nil {
		return src
	}
	for key, val := range src {
		full := strings.TrimPrefix(prefix+"."+key, ".")
		if dv, ok := dst[key]; ok && dv == nil {
			delete(dst, key)
		} else if !ok {
			dst[key] = val
		} else if dvm, ok := dv.(map[string]interface{}); ok {
			if vm, ok := val.(map[string]interface{}); ok {
				dst[key] = coalesceTables(dvm, vm, full)
			} else {
				fmt.Fprintf(os.Stderr, "warning: cannot overwrite table with non table for %s (%v)\n", full, val)
			}
		} else if _, ok := val.(map[string]interface{}); ok {
			fmt.Fprintf(os.Stderr, "warning: destination for %s is a table. Ignoring non-table value (%v)\n", full, dv)
		}
	}
	return dst
}

func toYAML(v interface{}) string {
	data, err := yaml.Marshal(v)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(data), "\n")
}

func fromYAML(str string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := yaml.Unmarshal([]byte(str), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func toJSON(v interface{}) string {
	data, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(data)
}

func fromJSON(str string) map[string]interface{} {
	m := make(map[string]interface{})
	if err := json.Unmarshal([]byte(str), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

const recursionMaxNums = 1000

func funcMap(t *template.Template) template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	f["toYaml"] = toYAML
	f["fromYaml"] = fromYAML
	f["toJson"] = toJSON
	f["fromJson"] = fromJSON
	included := map[string]int{}
	f["include"] = func(name string, data interface{}) (string, error) {
		var buf strings.Builder
		if included[name] > recursionMaxNums {
			return "", fmt.Errorf("rendering template has a nested reference name: %s", name)
		}
		included[name]++
		err := t.ExecuteTemplate(&buf, name, data)
		included[name]--
		return buf.String(), err
	}
	f["required"] = func(warn string, val interface{}) (interface{}, error) {
		if val == nil {
			return val, errors.New(warn)
		}
		if s, ok := val.(string); ok && s == "" {
			return val, errors.New(warn)
		}
		return val, nil
	}
	f["fail"] = func(msg string) (string, error) { return "", errors.New(msg) }
	f["lookup"] = func(string, string, string, string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil
	}
	return f
}

// sortTemplates is helm's order: deeper paths first, then by name.
func sortTemplates(names []string) {
	sort.SliceStable(names, func(i, j int) bool {
		di, dj := strings.Count(names[i], "/"), strings.Count(names[j], "/")
		if di != dj {
			return di > dj
		}
		return names[i] < names[j]
	})
}

func run() error {
	var valueFiles multiFlag
	chartDir := flag.String("chart", "", "chart directory")
	flag.Var(&valueFiles, "f", "values file (repeatable)")
	name := flag.String("name", "release-name", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	valuesOut := flag.String("values-out", "", "write the coalesced values here (JSON)")
	notesOut := flag.String("notes-out", "", "write the rendered NOTES.txt here")
	kubeVersion := flag.String("kube-version", "v1.31.0", "Capabilities.KubeVersion")
	flag.Parse()
	if *chartDir == "" {
		return errors.New("-chart is required")
	}

	raw, err := os.ReadFile(filepath.Join(*chartDir, "Chart.yaml"))
	if err != nil {
		return err
	}
	var meta Metadata
	if err := yaml.Unmarshal(raw, &meta); err != nil {
		return fmt.Errorf("Chart.yaml: %w", err)
	}
	if meta.APIVersion != "v2" || meta.Name == "" || meta.Version == "" {
		return errors.New("Chart.yaml: apiVersion v2, name and version are required")
	}

	defaults, err := readValues(filepath.Join(*chartDir, "values.yaml"))
	if err != nil {
		return err
	}
	user := map[string]interface{}{}
	for _, f := range valueFiles {
		v, err := readValues(f)
		if err != nil {
			return err
		}
		user = mergeMaps(user, v)
	}
	values := coalesceTables(user, defaults, "")
	if *valuesOut != "" {
		data, err := json.MarshalIndent(values, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(*valuesOut, data, 0o644); err != nil {
			return err
		}
	}

	files := Files{}
	_ = filepath.Walk(*chartDir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(*chartDir, p)
		if strings.HasPrefix(rel, "templates/") || strings.HasPrefix(rel, "tests/") ||
			rel == "Chart.yaml" || rel == "values.yaml" || rel == "values.schema.json" {
			return nil
		}
		if data, err := os.ReadFile(p); err == nil {
			files[rel] = data
		}
		return nil
	})

	kv := strings.SplitN(strings.TrimPrefix(*kubeVersion, "v"), ".", 3)
	if len(kv) < 2 {
		return fmt.Errorf("bad -kube-version %q", *kubeVersion)
	}
	top := map[string]interface{}{
		"Values": values,
		"Release": map[string]interface{}{
			"Name":      *name,
			"Namespace": *namespace,
			"Revision":  1,
			"Service":   "Helm",
			"IsUpgrade": false,
			"IsInstall": true,
		},
		"Chart": &meta,
		"Capabilities": &Capabilities{
			KubeVersion: KubeVersion{Version: *kubeVersion, Major: kv[0], Minor: kv[1]},
			APIVersions: VersionSet{"v1", "apps/v1", "batch/v1", "rbac.authorization.k8s.io/v1"},
			HelmVersion: map[string]string{"version": "v3-compatible-renderer"},
		},
		"Files": files,
	}

	tdir := filepath.Join(*chartDir, "templates")
	entries, err := os.ReadDir(tdir)
	if err != nil {
		return err
	}
	var names []string
	sources := map[string]string{}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(tdir, e.Name()))
		if err != nil {
			return err
		}
		n := path.Join(meta.Name, "templates", e.Name())
		names = append(names, n)
		sources[n] = string(data)
	}
	sortTemplates(names)

	t := template.New("gotpl")
	t.Option("missingkey=zero")
	t.Funcs(funcMap(t))
	for _, n := range names {
		if _, err := t.New(n).Parse(sources[n]); err != nil {
			return fmt.Errorf("parse error in %q: %w", n, err)
		}
	}

	rendered := map[string]string{}
	for _, n := range names {
		if strings.HasPrefix(path.Base(n), "_") {
			continue
		}
		vals := map[string]interface{}{}
		for k, v := range top {
			vals[k] = v
		}
		vals["Template"] = map[string]interface{}{"Name": n, "BasePath": path.Join(meta.Name, "templates")}
		var buf strings.Builder
		if err := t.ExecuteTemplate(&buf, n, vals); err != nil {
			return fmt.Errorf("render error in %q: %w", n, err)
		}
		rendered[n] = strings.ReplaceAll(buf.String(), "<no value>", "")
	}

	var out strings.Builder
	for _, n := range names {
		text, ok := rendered[n]
		if !ok {
			continue
		}
		if strings.HasSuffix(n, "NOTES.txt") {
			if *notesOut != "" {
				if err := os.WriteFile(*notesOut, []byte(text), 0o644); err != nil {
					return err
				}
			}
			continue
		}
		for _, doc := range strings.Split(text, "\n---") {
			doc = strings.TrimPrefix(doc, "---")
			if strings.TrimSpace(doc) == "" {
				continue
			}
			fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", n, strings.Trim(doc, "\n"))
		}
	}
	_, err = os.Stdout.WriteString(out.String())
	return err
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}
