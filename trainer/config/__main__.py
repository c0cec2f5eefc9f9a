from trainer.config.docs import markdown_table

print(markdown_table())
