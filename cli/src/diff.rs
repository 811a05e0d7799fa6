//! Unified diffs of two texts (`capstan diff`): the longest common subsequence of their lines,
//! printed as `diff -u` prints it, three lines of context around each change.

/// One line of an edit script.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Same,
    Del,
    Add,
}

/// The edit script from `a` to `b` (LCS by dynamic programming: objects are small; beyond
/// 4,000 lines a side the whole text is replaced).
fn script<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<(Op, &'a str)> {
    if a.len() > 4000 || b.len() > 4000 {
        return a
            .iter()
            .map(|l| (Op::Del, *l))
            .chain(b.iter().map(|l| (Op::Add, *l)))
            .collect();
    }
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push((Op::Same, a[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Deletions before additions, as diff prints them.
            out.push((Op::Del, a[i]));
            i += 1;
        } else {
            out.push((Op::Add, b[j]));
            j += 1;
        }
    }
    out
}

/// `a` → `b` as a unified diff with headers `--- from` / `+++ to`; empty when equal.
pub fn unified(from: &str, to: &str, a: &str, b: &str) -> String {
    const CONTEXT: usize = 3;
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let ops = script(&la, &lb);
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != Op::Same).collect();
    if changed.is_empty() {
        return String::new();
    }
    let mut out = format!("--- {from}\n+++ {to}\n");
    // Hunks: runs of changes closer than twice the context.
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(CONTEXT);
        let mut end = changed[k];
        while k + 1 < changed.len() && changed[k + 1] <= end + 2 * CONTEXT + 1 {
            k += 1;
            end = changed[k];
        }
        let end = (end + CONTEXT + 1).min(ops.len());
        // Line numbers where the hunk starts in each text.
        let before = &ops[..start];
        let a_start = before.iter().filter(|(o, _)| *o != Op::Add).count();
        let b_start = before.iter().filter(|(o, _)| *o != Op::Del).count();
        let hunk = &ops[start..end];
        let a_len = hunk.iter().filter(|(o, _)| *o != Op::Add).count();
        let b_len = hunk.iter().filter(|(o, _)| *o != Op::Del).count();
        let at = |s: usize, len: usize| if len == 0 { s } else { s + 1 };
        out.push_str(&format!(
            "@@ -{},{a_len} +{},{b_len} @@\n",
            at(a_start, a_len),
            at(b_start, b_len)
        ));
        for (op, line) in hunk {
            let sign = match op {
                Op::Same => ' ',
                Op::Del => '-',
                Op::Add => '+',
            };
            out.push(sign);
            out.push_str(line);
            out.push('\n');
        }
        k += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hunks_carry_three_lines_of_context_and_line_numbers() {
        let a = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let b = "a\nb\nc\nd\nE\nf\ng\nh\ni\n";
        assert_eq!(
            unified("live", "merged", a, b),
            "--- live\n+++ merged\n@@ -2,7 +2,8 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n+i\n"
        );
        assert_eq!(unified("x", "y", a, a), "");
        assert_eq!(
            unified("x", "y", "", "new\n"),
            "--- x\n+++ y\n@@ -0,0 +1,1 @@\n+new\n"
        );
    }
}
