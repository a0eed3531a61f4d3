package testbed

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// CopyApp copies the app's source tree at src to dst, leaving out local
// build products (_build, deps, node_modules, priv/static).
func CopyApp(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		for _, skip := range byHandExcludes {
			if rel == strings.TrimPrefix(skip, "./") {
				return filepath.SkipDir
			}
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, info.Mode().Perm())
	})
}

// AddGeneratedModules writes n Elixir modules of about 185 lines each under
// lib/chat/generated/ of the app at dir, so that a clean build costs what a
// mid-size Phoenix app's does (about 1,000 such modules compile clean in
// about 50 s on our 2-core machines). The code is synthetic: pattern
// matching, string building and recursion, with calls between modules so
// that Mix tracks compile-time dependencies as in a real app.
func AddGeneratedModules(dir string, n int) error {
	gen := filepath.Join(dir, "lib", "chat", "generated")
	if err := os.MkdirAll(gen, 0o755); err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		if err := os.WriteFile(filepath.Join(gen, fmt.Sprintf("mod_%04d.ex", i)), []byte(generatedModule(i)), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func generatedModule(i int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "defmodule Chat.Generated.Mod%04d do\n", i)
	fmt.Fprintf(&b, "  @moduledoc \"Synthetic module %d: compile-time weight for benchmarks.\"\n\n", i)
	b.WriteString("  defstruct [:id, :name, :tags, :score, :children]\n\n")
	for f := 0; f < 12; f++ {
		fmt.Fprintf(&b, `  @doc "Variant %[1]d of the synthetic work."
  def work_%[1]d(%%__MODULE__{id: id, name: name, tags: tags} = s, acc) when is_list(acc) do
    label = "#{name}-%[1]d-#{id}"
    tagged = Enum.map(tags || [], fn t -> String.upcase(to_string(t)) <> label end)
    score = Enum.reduce(tagged, s.score || 0, fn t, sum -> sum + byte_size(t) * %[1]d end)
    case rem(score, 3) do
      0 -> {:ok, [label | acc], score}
      1 -> {:more, Enum.reverse(tagged) ++ acc, score + 1}
      _ -> {:error, %%{label: label, score: score}}
    end
  end

  def work_%[1]d(_s, acc), do: {:noop, acc, 0}

`, f)
	}
	next := (i + 1) % 1000
	fmt.Fprintf(&b, `  def depth(0), do: 0
  def depth(n) when n > 0, do: 1 + depth(n - 1)

  def describe(%%__MODULE__{} = s) do
    [
      "id=#{s.id}",
      "name=#{s.name}",
      "score=#{s.score}",
      "children=#{length(s.children || [])}"
    ]
    |> Enum.join(",")
  end

  def peer_name, do: "Chat.Generated.Mod%04d"
end
`, next)
	return b.String()
}
