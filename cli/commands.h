/* commands.h — one entry point per subcommand (cmd_*.c); argv[0] is the command name. */
#ifndef KVF_CLI_COMMANDS_H
#define KVF_CLI_COMMANDS_H

int kvf_cmd_train(int argc, char **argv);
int kvf_cmd_eval(int argc, char **argv);
int kvf_cmd_convert(int argc, char **argv);
int kvf_cmd_uptrain(int argc, char **argv);
int kvf_cmd_info(int argc, char **argv);
int kvf_cmd_generate(int argc, char **argv);
int kvf_cmd_plot(int argc, char **argv);
int kvf_cmd_tokenize(int argc, char **argv);
int kvf_cmd_prepare(int argc, char **argv);

#endif
