package jobspecs

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// validateCases pins the exact diagnostics for every jobspec in testdata/.
// Positions are file:line:col of the offending value or block header.
var validateCases = []struct {
	file       string
	unreadable bool // parse failure: exactly one diagnostic, ErrUnreadable
	want       []string
}{
	{file: "bad_app_no_data.nomad.hcl", want: []string{
		"bad_app_no_data.nomad.hcl:38:7: error: app task \"app\" has no data path, so the syncer has nothing to replicate; hint: set data = \"/data\" (where the app keeps its state inside the container)",
	}},
	{file: "bad_app_wiring.nomad.hcl", want: []string{
		"bad_app_wiring.nomad.hcl:39:17: error: image of task \"app\" is empty; hint: set image = \"name:tag\"",
		"bad_app_wiring.nomad.hcl:40:17: error: port \"web\" of task \"app\" is not declared in the group's network block; hint: add port \"web\" {} to the group's network block",
		"bad_app_wiring.nomad.hcl:41:17: error: data path \"data\" of task \"app\" must be absolute; hint: use an absolute path inside the container, e.g. \"/data\"",
	}},
	{file: "bad_batch_job.nomad.hcl", want: []string{
		"bad_batch_job.nomad.hcl:2:10: error: job type \"batch\" cannot run Bedrock groups; hint: use type = \"service\" (the default): Bedrock keeps a long-running master and its clones",
	}},
	{file: "bad_count2.nomad.hcl", want: []string{
		"bad_count2.nomad.hcl:3:13: error: count = 2 runs fewer than 3 instances; Bedrock needs at least 3 for failover; hint: set count = 3 or more",
	}},
	{file: "bad_count_string.nomad.hcl", want: []string{
		"bad_count_string.nomad.hcl:3:13: error: count must be a number; hint: write count as a number literal",
	}},
	{file: "bad_distinct_false.nomad.hcl", want: []string{
		"bad_distinct_false.nomad.hcl:7:18: error: distinct_hosts is disabled, so Nomad may place several instances on one node; hint: set the constraint's value to \"true\"",
	}},
	{file: "bad_empty.nomad.hcl", want: []string{
		"bad_empty.nomad.hcl:1:1: error: no job block in this file; hint: a jobspec needs a job \"name\" { ... } block",
	}},
	{file: "bad_eval_error.nomad.hcl", want: []string{
		"bad_eval_error.nomad.hcl:3:17: error: cannot evaluate count: Invalid operand; hint: Unsuitable value for right operand: a number is required.",
	}},
	{file: "bad_image_and_syncer.nomad.hcl", want: []string{
		"bad_image_and_syncer.nomad.hcl:23:5: error: task \"syncer\" has both image and a syncer block; hint: a bedrock task is either the app (image) or the syncer (syncer block); split it into two tasks",
		"bad_image_and_syncer.nomad.hcl:37:5: error: group \"server\" has no syncer task, so the data of task \"app\" is not replicated; hint: add a syncer task: driver = \"bedrock\", lifecycle { hook = \"prestart\" sidecar = true }, config { syncer { port = \"sync\" } }",
	}},
	{file: "bad_job_distinct_false.nomad.hcl", want: []string{
		"bad_job_distinct_false.nomad.hcl:3:22: error: distinct_hosts is disabled, so Nomad may place several instances on one node; hint: set the constraint's value to \"true\"",
	}},
	{file: "bad_labels.nomad.hcl", want: []string{
		"bad_labels.nomad.hcl:2:3: error: group block needs exactly one label, its name; hint: write group \"name\" { ... }",
	}},
	{file: "bad_metrics_port.nomad.hcl", want: []string{
		"bad_metrics_port.nomad.hcl:32:26: error: syncer metrics_port \"prom\" is not declared in the group's network block; hint: add port \"prom\" {} to the group's network block",
	}},
	{file: "bad_neither.nomad.hcl", want: []string{
		"bad_neither.nomad.hcl:23:5: error: bedrock task \"syncer\" has neither image nor a syncer block; hint: set image = \"...\" for the app task, or add syncer { port = \"sync\" } to the syncer task's config",
		"bad_neither.nomad.hcl:34:5: error: group \"server\" has no syncer task, so the data of task \"app\" is not replicated; hint: add a syncer task: driver = \"bedrock\", lifecycle { hook = \"prestart\" sidecar = true }, config { syncer { port = \"sync\" } }",
	}},
	{file: "bad_no_count.nomad.hcl", want: []string{
		"bad_no_count.nomad.hcl:2:3: error: group \"server\" has no count, so Nomad runs 1 instance; Bedrock needs at least 3; hint: add count = 3 (or more) to the group",
	}},
	{file: "bad_no_distinct.nomad.hcl", want: []string{
		"bad_no_distinct.nomad.hcl:2:3: error: group \"server\" has no distinct_hosts constraint, so Nomad may place several instances on one node; hint: add constraint { operator = \"distinct_hosts\" value = \"true\" } to the group (or the job)",
	}},
	{file: "bad_no_job.nomad.hcl", want: []string{
		"bad_no_job.nomad.hcl:1:1: error: no job block in this file; hint: a jobspec needs a job \"name\" { ... } block",
	}},
	{file: "bad_no_syncer.nomad.hcl", want: []string{
		"bad_no_syncer.nomad.hcl:23:5: error: group \"server\" has no syncer task, so the data of task \"app\" is not replicated; hint: add a syncer task: driver = \"bedrock\", lifecycle { hook = \"prestart\" sidecar = true }, config { syncer { port = \"sync\" } }",
	}},
	{file: "bad_scaling_min.nomad.hcl", want: []string{
		"bad_scaling_min.nomad.hcl:6:13: error: scaling min = 1 lets the group shrink below 3 instances; hint: set min = 3 or more",
	}},
	{file: "bad_sync_no_network.nomad.hcl", want: []string{
		"bad_sync_no_network.nomad.hcl:24:18: error: syncer port \"sync\" is not declared in the group's network block; hint: add port \"sync\" {} to the group's network block",
		"bad_sync_no_network.nomad.hcl:33:17: error: port \"http\" of task \"app\" is not declared in the group's network block; hint: add port \"http\" {} to the group's network block",
	}},
	{file: "bad_sync_port_undeclared.nomad.hcl", want: []string{
		"bad_sync_port_undeclared.nomad.hcl:30:18: error: syncer port \"sync\" is not declared in the group's network block; hint: add port \"sync\" {} to the group's network block",
	}},
	{file: "bad_syncer_attribute.nomad.hcl", want: []string{
		"bad_syncer_attribute.nomad.hcl:30:9: error: syncer must be a block, not an attribute; hint: write syncer { port = \"sync\" } inside config",
	}},
	{file: "bad_syncer_no_lifecycle.nomad.hcl", want: []string{
		"bad_syncer_no_lifecycle.nomad.hcl:23:5: error: syncer task \"syncer\" has no lifecycle block; it must be a prestart sidecar; hint: add lifecycle { hook = \"prestart\" sidecar = true } to the syncer task",
	}},
	{file: "bad_syncer_no_port.nomad.hcl", want: []string{
		"bad_syncer_no_port.nomad.hcl:30:9: error: syncer block of task \"syncer\" has no port; hint: set port = \"sync\" and declare port \"sync\" {} in the group's network block",
	}},
	{file: "bad_syncer_not_sidecar.nomad.hcl", want: []string{
		"bad_syncer_not_sidecar.nomad.hcl:27:19: error: syncer task \"syncer\" is not a sidecar (sidecar = false); hint: set sidecar = true so the syncer keeps running beside the app",
	}},
	{file: "bad_syncer_only.nomad.hcl", want: []string{
		"bad_syncer_only.nomad.hcl:23:5: error: group \"server\" has a syncer task but no bedrock app task; hint: add the app task (driver = \"bedrock\" with image = \"...\") or remove the syncer",
	}},
	{file: "bad_syncer_poststart.nomad.hcl", want: []string{
		"bad_syncer_poststart.nomad.hcl:25:7: error: syncer task \"syncer\" is not a sidecar (sidecar is not set); hint: set sidecar = true so the syncer keeps running beside the app",
		"bad_syncer_poststart.nomad.hcl:26:16: error: syncer task \"syncer\" has lifecycle hook \"poststart\"; it must be \"prestart\"; hint: set hook = \"prestart\" so the syncer elects and syncs before the app starts",
	}},
	{file: "bad_syntax_garbage.nomad.hcl", unreadable: true, want: []string{
		"bad_syntax_garbage.nomad.hcl:1:19: error: syntax error: Invalid multi-line string; hint: Quoted strings may not be split over multiple lines. To produce a multi-line string, either use the \\n escape to represent a newline character or use the \"heredoc\" multi-line template syntax.",
	}},
	{file: "bad_syntax_token.nomad.hcl", unreadable: true, want: []string{
		"bad_syntax_token.nomad.hcl:3:13: error: syntax error: Invalid expression; hint: Expected the start of an expression, but found an invalid expression token.",
	}},
	{file: "bad_syntax_unclosed.nomad.hcl", unreadable: true, want: []string{
		"bad_syntax_unclosed.nomad.hcl:1:12: error: syntax error: Unclosed configuration block; hint: There is no closing brace for this block before the end of the file. This may be caused by incorrect brace nesting elsewhere in this file.",
	}},
	{file: "bad_two_apps.nomad.hcl", want: []string{
		"bad_two_apps.nomad.hcl:45:5: error: group \"server\" has more than one bedrock app task (\"app\" and \"worker\"); hint: one app per group: move the other app into its own group or job",
	}},
	{file: "bad_two_jobs.nomad.hcl", want: []string{
		"bad_two_jobs.nomad.hcl:47:1: error: more than one job block in one file; hint: Nomad runs one job per file; move this job into its own file",
	}},
	{file: "bad_two_syncers.nomad.hcl", want: []string{
		"bad_two_syncers.nomad.hcl:36:5: error: group \"server\" has more than one syncer task (\"syncer\" and \"syncer2\"); hint: keep one syncer task per group",
	}},
	{file: "bad_values.nomad.hcl", want: []string{
		"bad_values.nomad.hcl:3:13: error: count must be a whole number, not 3.5; hint: write count as an integer",
		"bad_values.nomad.hcl:12:18: error: delay \"soon\" is not a valid duration; hint: write a duration such as \"5s\" or \"1m30s\"",
		"bad_values.nomad.hcl:27:19: error: sidecar must be a bool; hint: write sidecar as a bool literal",
	}},
	{file: "good_distinct_no_value.nomad.hcl", want: nil},
	{file: "good_distinct_property.nomad.hcl", want: nil},
	{file: "good_full_settings.nomad.hcl", want: nil},
	{file: "good_job_distinct.nomad.hcl", want: nil},
	{file: "good_minimal.nomad.hcl", want: nil},
	{file: "good_mixed_groups.nomad.hcl", want: nil},
	{file: "good_variables.nomad.hcl", want: nil},
	{file: "warn_dynamic_task.nomad.hcl", want: []string{
		"warn_dynamic_task.nomad.hcl:36:5: warning: dynamic task blocks are not expanded; the tasks they generate are not checked; hint: write the bedrock tasks as plain task blocks",
	}},
	{file: "good_no_restart.nomad.hcl", want: nil},
	{file: "warn_not_bedrock.nomad.hcl", want: []string{
		"warn_not_bedrock.nomad.hcl:1:1: warning: no task in job \"web\" uses the bedrock driver; nothing to check; hint: set driver = \"bedrock\" on the app and syncer tasks",
	}},
	{file: "warn_reschedule.nomad.hcl", want: []string{
		"warn_reschedule.nomad.hcl:7:19: warning: reschedule never replaces a failed instance (unlimited = false, attempts = 0), so the group stays short of a clone; hint: set unlimited = true, or attempts > 0",
		"warn_reschedule.nomad.hcl:8:19: warning: reschedule delay = 2m0s leaves the group short of a clone that long after an instance fails; hint: set delay = \"5s\" to \"30s\"",
	}},
	{file: "good_restart_slow.nomad.hcl", want: nil},
	{file: "good_restart_task_mode_delay.nomad.hcl", want: nil},
	{file: "warn_stateless_no_syncer.nomad.hcl", want: []string{
		"warn_stateless_no_syncer.nomad.hcl:23:5: warning: group \"server\" has no syncer task: task \"app\" runs on every instance and nothing is replicated; hint: fine for a stateless app; for state, add a syncer task and set data on the app",
	}},
	{file: "warn_traefik_service.nomad.hcl", want: []string{
		"warn_traefik_service.nomad.hcl:39:14: warning: this Nomad service carries Traefik tags on every instance, so Traefik may route to clones, which do not run the app; hint: move these tags to the syncer block's tags: the syncer gives them only to the master",
	}},
	{file: "warn_unknown_values.nomad.hcl", want: []string{
		"warn_unknown_values.nomad.hcl:7:13: warning: cannot evaluate count statically; hint: pass the value with -var name=value or use a literal; the driver re-checks placement at run time",
		"warn_unknown_values.nomad.hcl:11:18: warning: cannot evaluate distinct_hosts statically; hint: pass the value with -var name=value or use a literal; the driver re-checks placement at run time",
		"warn_unknown_values.nomad.hcl:30:19: warning: cannot evaluate lifecycle hook statically; hint: pass the value with -var name=value or use a literal",
	}},
	{file: "warn_update.nomad.hcl", want: []string{
		"warn_update.nomad.hcl:4:24: warning: update min_healthy_time = 5s can mark a replacement healthy before its initial sync ends, so the next replacement may take the master while no clone is current; hint: set min_healthy_time = \"30s\" or more (longer than an initial sync of your data)",
		"warn_update.nomad.hcl:11:22: warning: update max_parallel = 0 replaces all instances at once, the master included; hint: set max_parallel = 1 so instances are replaced one at a time and clones stay synced",
	}},
	{file: "good_scaling_no_count.nomad.hcl", want: nil},
	{file: "good_functions.nomad.hcl", want: nil},
	{file: "good_var_ports.nomad.hcl", want: nil},
	{file: "bad_scaling_no_count.nomad.hcl", want: []string{
		"bad_scaling_no_count.nomad.hcl:4:13: error: scaling min = 2 lets the group shrink below 3 instances; hint: set min = 3 or more",
	}},
	{file: "bad_task_distinct.nomad.hcl", want: []string{
		"bad_task_distinct.nomad.hcl:2:3: error: group \"server\" has no distinct_hosts constraint, so Nomad may place several instances on one node; hint: add constraint { operator = \"distinct_hosts\" value = \"true\" } to the group (or the job)",
		"bad_task_distinct.nomad.hcl:34:26: error: task \"app\" sets a distinct hosts constraint, which Nomad only accepts on a job or group; hint: move the constraint into the group",
	}},
	{file: "bad_function_error.nomad.hcl", want: []string{
		"bad_function_error.nomad.hcl:3:18: error: cannot evaluate count: Invalid function argument; hint: Invalid value for \"numbers\" parameter: a number is required.",
	}},
	{file: "warn_migrate_disconnect.nomad.hcl", want: []string{
		"warn_migrate_disconnect.nomad.hcl:6:22: warning: migrate max_parallel = 2 can move the master together with clones when nodes drain; hint: set max_parallel = 1 in the migrate block",
		"warn_migrate_disconnect.nomad.hcl:11:20: warning: disconnect replace = false leaves the group short of a clone while a node is disconnected; hint: remove replace = false so Nomad places a replacement clone",
	}},
	{file: "warn_unknown_function.nomad.hcl", want: []string{
		"warn_unknown_function.nomad.hcl:3:13: warning: cannot evaluate count statically; hint: pass the value with -var name=value or use a literal; the driver re-checks placement at run time",
	}},
}

func TestValidateTestdata(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.nomad.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	covered := map[string]bool{}
	for _, tc := range validateCases {
		covered[tc.file] = true
		t.Run(strings.TrimSuffix(tc.file, ".nomad.hcl"), func(t *testing.T) {
			src, err := os.ReadFile(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			diags, err := Validate(tc.file, src, ValidateOptions{})
			if got := err != nil; got != tc.unreadable {
				t.Errorf("unreadable = %v (err %v), want %v", got, err, tc.unreadable)
			}
			var got []string
			for _, d := range diags {
				got = append(got, d.String())
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("diagnostics differ\ngot:\n\t%s\nwant:\n\t%s", strings.Join(got, "\n\t"), strings.Join(tc.want, "\n\t"))
			}
			if tc.unreadable && len(diags) != 1 {
				t.Errorf("an unparsable file must yield exactly one diagnostic, got %d", len(diags))
			}
			wantErrors := slices.ContainsFunc(tc.want, func(s string) bool { return strings.Contains(s, ": error: ") })
			if diags.HasErrors() != wantErrors {
				t.Errorf("HasErrors = %v, want %v", diags.HasErrors(), wantErrors)
			}
		})
	}
	for _, f := range files {
		if !covered[filepath.Base(f)] {
			t.Errorf("%s has no expectation in validateCases", f)
		}
	}
	if len(validateCases) < 25 {
		t.Errorf("only %d cases; keep at least 25", len(validateCases))
	}
}
